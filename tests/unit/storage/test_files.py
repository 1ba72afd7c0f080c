import pytest

from serving.errors import InvalidRequestError, NotFoundError
from serving.storage.files import FileStore
from serving.storage.local import LocalObjectStore


@pytest.fixture
def files(tmp_path):
    return FileStore(LocalObjectStore(tmp_path), max_bytes=1000, purposes=["batch"])


def test_create_get_content_delete(files):
    f = files.create("team-a", b'{"a": 1}\n', filename="../../in.jsonl", purpose="batch")
    assert f.id.startswith("file-") and f.filename == "in.jsonl" and f.bytes == 9
    assert files.get("team-a", f.id) == f
    assert files.content("team-a", f.id) == b'{"a": 1}\n'
    assert files.delete("team-a", f.id) == {"id": f.id, "object": "file", "deleted": True}
    with pytest.raises(NotFoundError):
        files.get("team-a", f.id)


def test_other_keys_get_404_and_do_not_see_files(files):
    f = files.create("team-a", b"x", filename="a.jsonl", purpose="batch")
    for call in (files.get, files.content, files.delete):
        with pytest.raises(NotFoundError, match="No such file"):
            call("team-b", f.id)
    with pytest.raises(NotFoundError):
        files.get(None, f.id)  # the open API's anonymous owner is another owner too
    assert files.list("team-b")["data"] == []
    assert [x["id"] for x in files.list("team-a")["data"]] == [f.id]


def test_list_pagination_and_filters(files):
    made = [files.create("k", b"x", filename=f"{i}.jsonl", purpose="batch") for i in range(5)]
    page = files.list("k", limit=2, order="asc")
    assert page["has_more"] and len(page["data"]) == 2
    rest = files.list("k", limit=10, order="asc", after=page["last_id"])
    assert not rest["has_more"]
    assert {x["id"] for x in page["data"] + rest["data"]} == {m.id for m in made}
    assert files.list("k", purpose="fine-tune")["data"] == []
    with pytest.raises(InvalidRequestError):
        files.list("k", order="sideways")


def test_bad_purpose_empty_file_and_bad_ids(files):
    with pytest.raises(InvalidRequestError, match="purpose 'fine-tune'"):
        files.create("k", b"x", filename="a", purpose="fine-tune")
    with pytest.raises(InvalidRequestError, match="empty"):
        files.create("k", b"", filename="a", purpose="batch")
    with pytest.raises(NotFoundError):
        files.get("k", "../../etc/passwd")
