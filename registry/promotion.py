"""Which version may become champion: the promotion rule, read from two version tags.

The drift gate (outside this package) writes, with every verdict, whether the policy that
produced it promotes it::

    cordwatch.drift.verdict     = pass | warn | fail
    cordwatch.drift.promotable  = true | false   (the policy's ``promotable`` list)

The registry knows nothing of policies: :func:`is_promotable` only reads those tags. A
version gated before ``cordwatch.drift.promotable`` existed (tag absent) is promotable when
its verdict is ``pass``, the old rule. A ``fail`` never is, whatever the other tag says (a
policy cannot promote it; a stale tag left by an earlier check must not either).
``Registry.promote``, ``cordwatch models audit`` and the release workflow all use this rule.

>>> is_promotable({VERDICT_TAG: "warn", PROMOTABLE_TAG: "true"})
True
>>> is_promotable({VERDICT_TAG: "warn"}), is_promotable({VERDICT_TAG: "pass"})
(False, True)
>>> promotion_tags({VERDICT_TAG: "warn"})[PROMOTABLE_TAG]
'false'
"""

from __future__ import annotations

from collections.abc import Mapping

#: Tag written by the drift check: its verdict.
VERDICT_TAG = "cordwatch.drift.verdict"
#: Tag written by the drift check beside the verdict: ``true`` when its policy promotes it.
PROMOTABLE_TAG = "cordwatch.drift.promotable"
#: Aliases that only move to a promotable version (unless forced).
GATED_ALIASES = frozenset({"champion"})
#: Verdicts a policy may promote (``fail`` never).
_PROMOTABLE_VERDICTS = ("pass", "warn")


def is_promotable(tags: Mapping[str, str]) -> bool:
    """Whether a version with these tags may become champion (see the module docstring)."""
    verdict = tags.get(VERDICT_TAG, "")
    flag = tags.get(PROMOTABLE_TAG)
    if flag is None:  # gated before the tag existed
        return verdict == "pass"
    return flag == "true" and verdict in _PROMOTABLE_VERDICTS


def refusal(alias: str, tags: Mapping[str, str]) -> str | None:
    """Why ``alias`` cannot move to a version with these tags (one line), or None if it can."""
    if alias not in GATED_ALIASES or is_promotable(tags):
        return None
    verdict = tags.get(VERDICT_TAG, "")
    override = "override with --force --reason"
    if not verdict:
        return f"cannot move {alias}: no drift verdict yet ({VERDICT_TAG}=pass needed; {override})"
    if verdict not in _PROMOTABLE_VERDICTS:
        why = "never promotable"
    elif PROMOTABLE_TAG not in tags:
        why = f"checked before {PROMOTABLE_TAG} existed: only a pass is promotable"
    else:
        why = f"the policy of its drift check does not promote {verdict}: {PROMOTABLE_TAG}=false"
    return f"cannot move {alias}: verdict is {verdict!r} ({why}; {override})"


def promotion_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` as written to a version: a verdict without ``cordwatch.drift.promotable`` gets
    it by the old rule (pass only), so an earlier check's flag never outlives its verdict."""
    out = dict(tags)
    if VERDICT_TAG in out and PROMOTABLE_TAG not in out:
        out[PROMOTABLE_TAG] = "true" if out[VERDICT_TAG] == "pass" else "false"
    return out
