"""Published dataset ids and the provenance of more3s' own collections."""

import minari

from more3s.data import collect_dataset, dataset_path, dataset_provenance, published_reason


def test_remote_listing_only_when_online(monkeypatch):
    import more3s.data.remote as io

    calls = []

    def listing(**kw):
        calls.append(kw)
        return {"someone/listed-v0": {}}

    monkeypatch.setattr(minari, "list_remote_datasets", listing)
    assert published_reason("someone/listed-v0") is None and calls == []  # HF_HUB_OFFLINE=1: never asked
    monkeypatch.setattr(io, "is_online", lambda timeout=2.0: True)
    assert "remote lists" in published_reason("someone/listed-v0")
    assert published_reason("someone/other-v0") is None


def test_collections_record_their_provenance():
    collect_dataset("breakout", "random", 1, "mine/breakout-random-v0", seed=5, max_episode_steps=7,
                    progress=False)
    prov = dataset_provenance("mine/breakout-random-v0")
    from more3s import __version__

    assert prov["collected_by"] == "more3s" and prov["version"] == __version__
    assert prov["policy"] == "random" and prov["seed"] == 5 and prov["max_episode_steps"] == 7
    assert dataset_provenance(str(dataset_path("mine/breakout-random-v0"))) == prov  # by path alike
