"""A signer's kept answers (``AnswerLog``): what was published for a session comes back the same, after
a restart too; a torn last record from a crash is cut off and later answers follow a whole one; the
log rotates into one previous generation, so what it keeps is bounded but never less than a generation."""

from __future__ import annotations

from pathlib import Path

from schemas.messages import PartialSignatures, SigningRefused
from services.signer.answer_log import AnswerLog


def psig(i: int) -> PartialSignatures:
    return PartialSignatures(
        tx_id=f"t{i}", session_id=f"t{i}-a1", attempt=1, node="node-1", psigs=[bytes([i % 256]) * 32]
    )


def refusal(i: int) -> SigningRefused:
    return SigningRefused(tx_id=f"t{i}", session_id=f"t{i}-a2", attempt=2, node="node-1", reason="nonce used")


def test_answers_come_back_the_same_after_a_restart(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path)
    assert log.get("t1-a1") is None
    log.add([psig(1), refusal(1)])
    log.add([psig(2)])
    log.add([])
    assert log.get("t1-a1") == psig(1) and log.get("t1-a2") == refusal(1)
    log.close()
    again = AnswerLog(tmp_path)
    assert (
        again.get("t1-a1") == psig(1) and again.get("t1-a2") == refusal(1) and again.get("t2-a1") == psig(2)
    )
    assert len(again) == 3


def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    log = AnswerLog(tmp_path)
    log.add([psig(1), psig(2)])
    log.close()
    path = tmp_path / "answers.log"
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # the crash tore the second record
    again = AnswerLog(tmp_path)
    assert again.get("t1-a1") == psig(1) and again.get("t2-a1") is None
    again.add([psig(3)])
    again.close()
    third = AnswerLog(tmp_path)
    assert third.get("t1-a1") == psig(1) and third.get("t3-a1") == psig(3) and len(third) == 2
    (tmp_path / "answers.log").write_bytes(b"\x00\x00\x00\x05junk!" + b"more")  # not a record at all
    assert len(AnswerLog(tmp_path)) == 0


def test_rotation_keeps_one_previous_generation(tmp_path: Path) -> None:
    one = len(psig(1).session_id) + 60  # roughly a record
    log = AnswerLog(tmp_path, max_bytes=20 * one)
    for i in range(200):
        log.add([psig(i)])
    assert log.get("t199-a1") == psig(199) and log.get("t0-a1") is None
    kept = [i for i in range(200) if log.get(f"t{i}-a1") is not None]
    assert kept == list(range(kept[0], 200)) and 10 <= len(kept) <= 45
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size <= 2 * 20 * one + 200
    log.close()
    assert [i for i in range(200) if AnswerLog(tmp_path).get(f"t{i}-a1") is not None] == kept
