"""Render the ``annotate summarize`` report on a terminal with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:  # the console is the command line's (annotate.cli.console)
    from rich.console import Console


def _share_table(title: str, shares: dict[str, float]) -> Table:
    table = Table(title, "share", min_width=40)
    for label, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        table.add_row(label, f"{share:6.1%}")
    return table


def print_report(console: Console, report: dict) -> None:
    """Print a summary report (the dict from :func:`annotate.views.summarize.summarize`)."""
    console.print(f"[bold]{report['table']}[/]", highlight=False)
    console.print(
        f"{report['recordings']} recordings, {report['segments']} segments "
        f"({report['speech_segments']} with speech), "
        f"{report['audio_hours']:.3f} h audio, {report['speech_hours']:.3f} h speech"
    )
    console.print(_share_table("language, by speech time", report["language_share_by_time"]))
    console.print(_share_table("language, by recording", report["language_share_by_recording"]))
    emotions = report["emotion_by_language"]
    if emotions:
        labels = sorted({e for shares in emotions.values() for e in shares})
        console.print("[bold]emotion distribution per language[/] (share of speech segments)")
        table = Table("lang", *labels)
        for lang, shares in sorted(emotions.items()):
            table.add_row(lang, *(f"{shares.get(e, 0.0):.0%}" for e in labels))
        console.print(table)
    low = report["low_confidence"]
    console.print(
        f"low confidence (top probability < {low['threshold']}): "
        f"language {low['language']:.1%} of speech segments, emotion {low['emotion']:.1%}"
    )
    failures = report["failures"]
    if failures["count"] is None:
        console.print("failures: no failures table found")
    elif failures["count"] == 0:
        console.print("failures: none")
    else:
        console.print(f"[bold]failures: {failures['count']}[/] (first 10)")
        table = Table("path", "error", "message")
        for row in failures["examples"]:
            table.add_row(row["path"], row["error"], row["message"])
        console.print(table)
    models = report["run"]["models"]
    if models:
        console.print("models: " + ", ".join(f"{m['name']} ({m['task']})" for m in models))
    centred = (report["run"].get("run_centring") or {}).get("models")
    if centred:
        console.print("emotions relative to the run: " + ", ".join(
            f"{name} ({m['speech_s']:.0f} s of speech)" for name, m in centred.items()))
    adapted = report["run"].get("speaker_adaptation")
    if adapted:
        done = sum(m["speakers_adapted"] > 0 for m in adapted["models"].values())
        console.print(f"emotions relative to each speaker ({adapted['source']}): "
                      f"{adapted['speakers']} speakers, "
                      + ", ".join(f"{name} {m['speakers_adapted']} adapted"
                                  for name, m in adapted["models"].items())
                      + ("" if done else " (none had enough speech, or a second speaker)"))
