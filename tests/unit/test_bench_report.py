"""The benchmark's derived ratios and its completeness check (pure logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import merge
from bench.report import missing_keys
from bench.scenarios import EXTRA, KEYS, ORDER, REGISTRY, SCENARIOS, derive, scenario


def full_result() -> dict[str, Any]:
    result: dict[str, Any] = {k.name: 1.0 for k in KEYS}
    result.update(
        pipeline_eps=1000.0,
        naive_eps=100.0,
        limit_consume_eps=4000.0,
        limit_decode_eps=2000.0,
        limit_copy_rows_s=3000.0,
        store_eps=900.0,
        peer_quix_eps=600.0,
    )
    return result


def test_derive_computes_every_ratio_from_its_inputs() -> None:
    f = full_result()
    details: dict[str, Any] = {}
    notes = derive(f, details)
    assert notes == {}
    assert f["ratio_vs_naive"] == 10.0
    assert f["ratio_vs_limit"] == 0.5
    assert details["ingest"]["binding_limit"] == "limit_decode_eps"
    assert f["store_vs_quix"] == 1.5


def test_a_ratio_without_its_peer_is_null_with_a_note_naming_what_is_missing() -> None:
    f = full_result()
    f["peer_quix_eps"] = None
    f["peer_quix_eps_note"] = "quixstreams is not installed"
    for k, note in derive(f, {}).items():
        f[f"{k}_note"] = note
    assert f["store_vs_quix"] is None
    assert "peer_quix_eps" in f["store_vs_quix_note"]
    assert missing_keys(f) == []


def test_a_null_figure_without_a_note_is_reported_missing() -> None:
    f = full_result()
    derive(f, {})
    f["pipeline_eps"] = None
    f["store_vs_quix"] = None
    assert missing_keys(f) == ["pipeline_eps", "store_vs_quix"]


def test_merge_recomputes_ratios_and_replaces_their_notes() -> None:
    old = full_result()
    old["peer_quix_eps"] = None
    for k, note in derive(old, {}).items():
        old[f"{k}_note"] = note
    assert old["store_vs_quix"] is None
    new = {
        "scenarios_run": ["peers"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "peer_quix_eps": 450.0,
        "peer_connect_eps": 1.0,
    }
    merged = merge(old, new)
    assert merged["store_vs_quix"] == 2.0
    assert "store_vs_quix_note" not in merged
    assert missing_keys(merged) == []


def test_merge_replaces_a_figures_note_everywhere() -> None:
    old = full_result()
    old["peer_connect_eps"] = None
    old["peer_connect_eps_note"] = "not measured"
    old["notes"] = {"peer_connect_eps": "not measured"}
    new = {
        "scenarios_run": ["peers"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "peer_quix_eps": 450.0,
        "peer_connect_eps": 300.0,
        "peer_connect_eps_note": "reads a JSON copy",
    }
    merged = merge(old, new)
    assert merged["peer_connect_eps_note"] == merged["notes"]["peer_connect_eps"] == "reads a JSON copy"
    assert merged["store_vs_connect"] == 3.0


def test_merge_of_a_partial_run_keeps_ratios_computed_from_the_whole() -> None:
    old = full_result()
    derive(old, {})
    new = {
        "scenarios_run": ["ingest"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "store_eps": 1200.0,
        "pipeline_eps": 2000.0,
        "ratio_vs_naive": None,  # the partial run had no naive_eps
        "ratio_vs_naive_note": "not computed: naive_eps not measured",
        "notes": {"ratio_vs_naive": "not computed: naive_eps not measured"},
    }
    merged = merge(old, new)
    assert merged["ratio_vs_naive"] == 20.0
    assert "ratio_vs_naive_note" not in merged and "ratio_vs_naive" not in merged["notes"]
    assert merged["store_vs_quix"] == 2.0


def test_merge_of_a_scenario_the_full_run_did_not_have_completes_it() -> None:
    old = full_result()
    derive(old, {})
    old["scenarios_run"] = [s for s in SCENARIOS if s != "sdk"]  # a full run from before the sdk scenario
    for k in ("sdk_frames_per_s", "sdk_events_per_s"):
        del old[k]
    new = {
        "scenarios_run": ["sdk"],
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "sdk_frames_per_s": 900.0,
        "sdk_events_per_s": 9000.0,
        "details": {"sdk": {"tasks": 32}},
    }
    merged = merge(old, new)
    assert merged["scenarios_run"][-1] == "sdk"
    assert set(SCENARIOS) <= set(merged["scenarios_run"])  # so --update writes latest.json
    assert merged["sdk_frames_per_s"] == 900.0 and merged["details"]["sdk"] == {"tasks": 32}


def test_every_scenario_module_registers_once_in_run_order_and_owns_its_keys() -> None:
    package = Path(__file__).resolve().parents[2] / "bench" / "scenarios"
    shared = {"__init__", "context", "keys", "registry", "live"}
    assert {p.stem for p in package.glob("*.py")} - shared == set(ORDER)
    assert tuple(REGISTRY) == ORDER == SCENARIOS + EXTRA
    assert EXTRA == ("profile",)
    assert {k.scenario for k in KEYS} == set(SCENARIOS)  # every key is some scenario's
    assert sorted(k for sc in REGISTRY.values() for k in sc.keys) == sorted(k.name for k in KEYS)
    assert REGISTRY["limits"].keys == ("limit_consume_eps", "limit_decode_eps", "limit_copy_rows_s")
    assert [sc.name for sc in REGISTRY.values() if sc.setup] == ["environment"]


def test_a_scenario_registers_only_once() -> None:
    async def run(_: object) -> None:
        return None

    with pytest.raises(ValueError, match="twice"):
        scenario("limits")(run)
    assert REGISTRY["limits"].run is not run
