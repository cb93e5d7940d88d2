"""The signer's vote journal: durable appends, reload after a restart, and the daily-limit window."""

from __future__ import annotations

import json
from pathlib import Path

from services.signer.vote_journal import GROW_BYTES, JournalEntry, VoteJournal

DAY = 86_400_000


def entry(tx: str, ts: int, amount: int, approve: bool = True) -> JournalEntry:
    return JournalEntry(tx_id=tx, approve=approve, ts_ms=ts, amount=amount, sighashes=["00" * 32], reasons=[])


def used_part(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[: raw.find(b"\0")] if b"\0" in raw else raw


def test_entries_survive_a_restart_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "votes.jsonl"
    j = VoteJournal(path)
    j.record([entry("a", 1_000, 5), entry("b", 2_000, 7, approve=False)])
    j.record([entry("c", 3_000, 11)])
    j.close()
    end = len(used_part(path))
    with path.open("r+b") as f:  # a crash in the middle of a write: part of a line over the zeros
        f.seek(end)
        f.write(b'{"tx_id": "torn", "appr')
    again = VoteJournal(path)
    assert set(again.entries) == {"a", "b", "c"}
    assert again.entries["b"].approve is False
    assert again.spent_since(0) == 16  # approvals only
    assert len(used_part(path)) == end  # the torn bytes are gone from the file, not only skipped
    again.record([entry("d", 4_000, 1)])
    again.close()
    lines = used_part(path).decode().splitlines()
    assert [json.loads(x)["tx_id"] for x in lines] == ["a", "b", "c", "d"]


def test_bytes_after_a_hole_are_cleared(tmp_path: Path) -> None:
    """Blocks of a write reach the disk in any order: a later block may land while an earlier one did
    not. That write's votes were never published; its stray bytes must not turn up after later votes."""
    path = tmp_path / "votes.jsonl"
    j = VoteJournal(path)
    j.record([entry("a", 1_000, 5)])
    j.close()
    end = len(used_part(path))
    with path.open("r+b") as f:
        f.seek(end + 5000)
        f.write(b'b", "approve": true}\n')
    again = VoteJournal(path)
    assert set(again.entries) == {"a"}
    again.record([entry("b" * 40, 2_000, 1)])
    again.close()
    assert set(VoteJournal(path).entries) == {"a", "b" * 40}
    assert path.read_bytes()[len(used_part(path)) :].strip(b"\0") == b""


def test_a_journal_of_the_previous_layout_loads(tmp_path: Path) -> None:
    """The previous version appended lines with no zeros after them (and could leave a torn one)."""
    path = tmp_path / "votes.jsonl"
    lines = [json.dumps(entry(t, 1_000 * i, 3).__dict__) for i, t in enumerate("xyz")]
    path.write_text("\n".join(lines) + '\n{"tx_id": "to')
    j = VoteJournal(path)
    assert set(j.entries) == {"x", "y", "z"}
    j.record([entry("w", 9_000, 1)])
    j.close()
    assert set(VoteJournal(path).entries) == {"x", "y", "z", "w"}


def test_the_file_grows_by_chunks_and_keeps_every_vote(tmp_path: Path) -> None:
    path = tmp_path / "votes.jsonl"
    j = VoteJournal(path)
    batch = [entry(f"t{i:06d}", i, 1) for i in range(200)]
    rounds = 1 + GROW_BYTES // len("".join(json.dumps(e.__dict__) + "\n" for e in batch).encode())
    for r in range(rounds):
        j.record([entry(f"{r}-{e.tx_id}", e.ts_ms, 1) for e in batch])
    j.close()
    assert path.stat().st_size == 2 * GROW_BYTES
    assert len(VoteJournal(path).entries) == 200 * rounds


def test_the_daily_window_moves_forward(tmp_path: Path) -> None:
    j = VoteJournal(tmp_path / "votes.jsonl")
    t0 = 10 * DAY
    j.record([entry("a", t0, 100), entry("b", t0 + 1_000, 200), entry("no", t0 + 1_500, 999, False)])
    j.record([entry("c", t0 + DAY, 400)])
    assert j.spent_since(t0 + DAY - DAY) == 700
    assert j.spent_since(t0 + 500) == 600  # "a" left the window
    assert j.spent_since(t0 + 2_000) == 400
    j.record([entry("d", t0 + DAY + 5, 50)])
    assert j.spent_since(t0 + 2_000) == 450
    assert j.spent_since(t0 + 2 * DAY) == 0
    j.close()


def test_the_window_is_rebuilt_in_time_order_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "votes.jsonl"
    j = VoteJournal(path)
    j.record([entry("late", 5_000, 3), entry("early", 1_000, 2)])  # a clock step back between votes
    j.close()
    again = VoteJournal(path)
    assert again.spent_since(2_000) == 3
    again.close()
