import time

import pytest

from serving.batch.record import TERMINAL, BatchRecord, BatchStatus, new_batch
from serving.batch.store import BatchStore
from serving.errors import NotFoundError
from serving.storage.local import LocalObjectStore


@pytest.fixture
def batches(tmp_path):
    return BatchStore(LocalObjectStore(tmp_path))


def make(batches, owner="k"):
    batch = new_batch(owner, input_file_id="file-" + "1" * 32, endpoint="/v1/chat/completions",
                      completion_window="24h", metadata={"a": "b"}, window_s=86400)
    batches.create(batch)
    return batch


def test_create_load_active_and_privacy(batches):
    batch = make(batches)
    assert batches.load("k", batch.id) == batch
    assert batches.load("k", batch.id).status == BatchStatus.VALIDATING
    assert ("k", batch.id) in batches.active()
    with pytest.raises(NotFoundError):
        batches.load("other", batch.id)
    assert "owner" not in batch.public() and batch.public()["object"] == "batch"
    batches.deactivate(batch.id)
    assert batches.active() == []


def test_cancel_request_shows_as_cancelling_until_terminal(batches):
    batch = make(batches)
    batches.request_cancel(batch)
    assert batches.view(batch)["status"] == "cancelling"
    batch.status = BatchStatus.CANCELLED
    assert batches.view(batch)["status"] == "cancelled"


def test_parts_are_whole_and_ordered(batches):
    batch = make(batches)
    batch.total_chunks, batch.chunk_size = 3, 2
    ok = {"response": {"status_code": 200}}
    bad = {"response": {"status_code": 400}}
    batches.write_part(batch, 2, [dict(ok, custom_id="e")])
    batches.write_part(batch, 0, [dict(ok, custom_id="a"), dict(bad, custom_id="b")])
    assert batches.done_chunks(batch) == {0: (1, 1), 2: (1, 0)}
    assert [r["custom_id"] for r in batches.read_parts(batch)] == ["a", "b", "e"]


def test_list_newest_first_with_pagination(batches):
    made = []
    for _ in range(3):
        made.append(make(batches))
        time.sleep(0.01)
    page = batches.list("k", limit=2)
    assert page["has_more"] and len(page["data"]) == 2
    rest = batches.list("k", limit=2, after=page["last_id"])
    assert {b["id"] for b in page["data"] + rest["data"]} == {b.id for b in made}
    assert batches.list("nobody")["data"] == []


def test_a_record_holds_only_known_statuses_and_fields():
    batch = new_batch("k", input_file_id="file-" + "1" * 32, endpoint="/v1/chat/completions",
                      completion_window="24h", metadata=None, window_s=60)
    with pytest.raises(ValueError):
        batch.status = "done"
    with pytest.raises(ValueError):
        BatchRecord.model_validate({**batch.model_dump(), "colour": "red"})
    assert {s.value for s in BatchStatus if s in TERMINAL} == {"completed", "failed",
                                                               "expired", "cancelled"}
