"""The signer's vote journal: durable appends, reload after a restart, and the daily-limit window."""

from __future__ import annotations

from pathlib import Path

from services.signer.node import JournalEntry, VoteJournal

DAY = 86_400_000


def entry(tx: str, ts: int, amount: int, approve: bool = True) -> JournalEntry:
    return JournalEntry(tx_id=tx, approve=approve, ts_ms=ts, amount=amount, sighashes=["00" * 32], reasons=[])


def test_entries_survive_a_restart_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "votes.jsonl"
    j = VoteJournal(path)
    j.record([entry("a", 1_000, 5), entry("b", 2_000, 7, approve=False)])
    j.record([entry("c", 3_000, 11)])
    j.close()
    with path.open("a") as f:
        f.write('{"tx_id": "torn", "appr')  # a crash in the middle of an append
    again = VoteJournal(path)
    assert set(again.entries) == {"a", "b", "c"}
    assert again.entries["b"].approve is False
    assert again.spent_since(0) == 16  # approvals only
    again.record([entry("d", 4_000, 1)])  # appends after the torn line still load
    again.close()
    assert "d" in VoteJournal(path).entries


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
