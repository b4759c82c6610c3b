"""Plan renderers: Terraform-like text (rich on a terminal, plain lines in CI logs), the JSON document
and a Markdown summary sized for a pull-request comment."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from flux_plan.diff import ResourceChange
from flux_plan.plan import Plan

SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-", "noop": " ", "read": "<="}
VERB = {"create": "created", "update": "updated in place", "replace": "replaced (deleted, then created)",
        "delete": "destroyed", "noop": "unchanged", "read": "read"}
STYLE = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red", "noop": "dim", "read": "cyan"}
NO_CHANGES = "No changes. Your infrastructure matches the configuration."
MARKDOWN_CAP = 60_000


def summary_line(plan: Plan) -> str:
    s = plan.summary()
    return f"Plan: {s['add']} to add, {s['change']} to change, {s['destroy']} to destroy."


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _value(v: Any) -> str:
    """Display form of a value: JSON, digests shortened (the JSON output keeps them whole)."""
    if isinstance(v, str) and _HEX64.match(v):
        return json.dumps(v[:12] + "…", ensure_ascii=False)
    text = json.dumps(v, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def styler(markup: bool) -> Callable[[str, str], str]:
    """`st(style, text)`: rich markup on a terminal; plain text in CI logs, where parsing markup for
    every line of a large plan would cost seconds."""
    if markup:
        from rich.markup import escape  # not imported for plain text: ~40 ms of a plan in a CI log

        return lambda style, text: f"[{style}]{escape(text)}[/]" if style else escape(text)
    return lambda style, text: text


def _change_lines(c: ResourceChange, markup: bool = True) -> list[str]:
    st = styler(markup)
    lines = [f"  {st(STYLE.get(c.action, ''), SYMBOL[c.action] + ' ' + c.address)} {st('dim', 'will be ' + VERB[c.action])}"]
    for reason in c.reasons:
        lines.append(f"      {st('dim', '# ' + reason)}")
    for d in c.diffs:
        if c.action == "create" or (d.before is None and d.after is not None):
            lines.append(f"      {st('green', '+')} {st('', d.path)} = {st('', _value(d.after))}")
        elif c.action == "delete" or d.after is None:
            lines.append(f"      {st('red', '-')} {st('', d.path)} = {st('', _value(d.before))}")
        else:
            lines.append(f"      {st('yellow', '~')} {st('', d.path)}: {st('', _value(d.before))} → {st('', _value(d.after))}")
    return lines


def text_lines(plan: Plan, markup: bool = True) -> list[str]:
    """The human plan: rich-markup lines for a terminal, or plain lines (`markup=False`)."""
    st = styler(markup)
    out: list[str] = []
    for w in plan.warnings:
        out.append(f"{st('bold yellow', 'Warning:')} {st('', w)}")
    if plan.warnings:
        out.append("")
    if plan.drift:
        out.append(st("bold", "Objects have changed outside of Flux:"))
        for c in plan.drift:
            out.extend(_change_lines(c, markup))
        out.append("")
    if plan.refresh_only:
        if plan.drift:
            out.append(f"Refresh-only plan: {len(plan.drift)} drifted resource(s); applying it records them in state.")
        else:
            out.append(NO_CHANGES)
        return out
    if not plan.changes:
        out.append(NO_CHANGES)
        return out
    what = "destroy" if plan.destroy else "perform the following actions"
    out.append(st("", f"Flux will {what} (project {plan.project}, stage {plan.stage}, provider {plan.provider}):"))
    out.append("")
    for c in plan.changes:
        out.extend(_change_lines(c, markup))
        out.append("")
    out.append(st("bold", summary_line(plan)))
    return out


def to_json(plan: Plan) -> dict[str, Any]:
    return plan.to_doc()


def _md_cell(v: Any) -> str:
    text = _value(v).replace("|", "\\|").replace("`", "'")
    return f"`{text}`"


def _md_block(c: ResourceChange) -> str:
    rows = [f"<details><summary><code>{SYMBOL[c.action]} {c.address}</code> — {VERB[c.action]}</summary>", ""]
    for r in c.reasons:
        rows.append(f"- {r}")
    if c.diffs and c.type == "secret":  # not even the fingerprint: a comment is public to the repository
        rows += ["", "value: (sensitive) changed" if c.action != "delete" else "value: (sensitive) removed"]
    elif c.diffs:
        rows += ["", "| attribute | before | after |", "|---|---|---|"]
        for d in c.diffs:
            rows.append(f"| `{d.path}` | {_md_cell(d.before)} | {_md_cell(d.after)} |")
    rows += ["", "</details>", ""]
    return "\n".join(rows) + "\n"


def render_markdown(plan: Plan, cap: int = MARKDOWN_CAP) -> str:
    """A PR comment: counts, a visible warning when anything is destroyed or replaced, one collapsed
    block per resource; never longer than `cap` characters (GitHub refuses bigger comments)."""
    head = [f"### Flux plan: `{plan.project}` / stage `{plan.stage}` (provider `{plan.provider}`)", ""]
    if plan.refresh_only:
        head.append(f"**Refresh-only: {len(plan.drift)} resource(s) drifted.**" if plan.drift else f"**{NO_CHANGES}**")
    elif plan.changes:
        head.append(f"**{summary_line(plan)}**")
    else:
        head.append(f"**{NO_CHANGES}**")
    head.append("")
    risky = [c.address for c in plan.changes if c.action in ("delete", "replace")]
    if risky:
        shown = ", ".join(f"`{a}`" for a in risky[:20]) + (f" and {len(risky) - 20} more" if len(risky) > 20 else "")
        head += ["> [!WARNING]", f"> ⚠️ **This plan destroys or replaces {len(risky)} resource(s):** {shown}"]
        migs = [a for a in risky if a.startswith("migration.")]
        secrets = [a for a in risky if a.startswith("secret.")]
        if migs:
            head.append(f"> - **migrations**: {', '.join(f'`{a}`' for a in migs[:20])} (removing an applied "
                        "migration drops nothing from the database)")
        if secrets:
            head.append(f"> - **secrets**: {', '.join(f'`{a}`' for a in secrets[:20])} (functions lose access "
                        "to these values)")
        head.append("")
    for w in plan.warnings[:20]:
        head.append(f"> ⚠️ {w}")
    if plan.warnings:
        head.append("")
    text = "\n".join(head) + "\n"
    blocks: list[tuple[ResourceChange | None, str]] = []
    if plan.drift:
        blocks.append((None, "#### Changed outside of Flux\n\n"))
        blocks += [(c, _md_block(c)) for c in plan.drift]
    if plan.changes and not plan.refresh_only:
        blocks.append((None, "#### Changes\n\n"))
        blocks += [(c, _md_block(c)) for c in plan.changes]
    reserve = 1200
    for i, (_, block) in enumerate(blocks):
        if len(text) + len(block) > cap - reserve:
            left = [c for c, _ in blocks[i:] if c is not None]
            counts: dict[str, int] = {}
            for c in left:
                counts[c.action] = counts.get(c.action, 0) + 1
            kinds = ", ".join(f"{n} {VERB[a].split(' ')[0]}" for a, n in sorted(counts.items()))
            names = ", ".join(f"`{c.address}`" for c in left[:10]) + (" …" if len(left) > 10 else "")
            text += (f"\n_… {len(left)} more block(s) not shown ({kinds}): {names}. The comment is capped at "
                     f"{cap:,} characters; run `flux show` on the plan file for the full plan._\n")
            break
        text += block
    return text[:cap]
