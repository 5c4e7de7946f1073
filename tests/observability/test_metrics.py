"""/metrics after real runs through the embedded arq worker: names and labels an operator relies on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from app.engine.metrics_server import WorkerMetricsServer
from app.platform.config import Settings
from tests.conftest import make_token, running_app
from tests.factories import make_job, wait_for_logs, wait_until
from tests.observability.scrape import has, samples, value
from tests.support.servers import free_port


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_a_manual_run_is_counted_with_its_job_trigger_result_and_duration(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    before = await scrape(client)
    await make_job(id="metered", payload={"seconds": 0.05})
    await make_job(id="metered-fail", type="test_fail", payload={"message": "nope"})
    assert (await client.post("/api/jobs/metered/trigger", headers=auth)).status_code == 200
    assert (await client.post("/api/jobs/metered-fail/trigger", headers=auth)).status_code == 200
    await wait_for_logs(client, "metered", auth)
    await wait_for_logs(client, "metered-fail", auth)

    async def both_counted() -> bool:
        # A run is counted just after its record closes (and its lease is released): wait for that moment.
        text = await scrape(client)
        return all(
            value(text, "jobs_gateway_runs_finished_total", job_id=job_id, result=result)
            > value(before, "jobs_gateway_runs_finished_total", job_id=job_id, result=result)
            for job_id, result in (("metered", "success"), ("metered-fail", "error"))
        )

    await wait_until(both_counted, timeout=5)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("jobs_gateway_runs_started_total", job_id="metered", trigger="manual") == 1
    assert delta("jobs_gateway_runs_finished_total", job_id="metered", result="success") == 1
    assert delta("jobs_gateway_runs_finished_total", job_id="metered-fail", result="error") == 1
    assert delta("jobs_gateway_run_duration_seconds_count", job_id="metered") == 1
    assert delta("jobs_gateway_run_duration_seconds_sum", job_id="metered") >= 0.05
    assert delta("jobs_gateway_events_published_total", event="run.started") >= 2
    assert delta("jobs_gateway_events_published_total", event="run.finished") >= 2
    # Requests are labelled by route template, never by the raw path with its job id.
    assert (
        delta("jobs_gateway_http_requests_total", method="POST", route="/api/jobs/{jobId}/trigger", status="200") == 2
    )
    assert has(after, "jobs_gateway_http_request_duration_seconds_bucket", route="/api/jobs/{jobId}/logs")
    assert not has(after, "jobs_gateway_http_requests_total", route="/api/jobs/metered/trigger")
    assert value(after, "jobs_gateway_queue_depth") >= 0
    for name in (
        "jobs_gateway_websocket_subscribers",
        "jobs_gateway_live_subscriptions",
        "jobs_gateway_events_delivered_total",
        "jobs_gateway_events_dropped_total",
        "jobs_gateway_scheduler_lag_seconds_count",
    ):
        assert has(after, name), name


async def test_a_deleted_jobs_series_leave_metrics(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    await make_job(id="churned", payload={"seconds": 0.01})
    assert (await client.post("/api/jobs/churned/trigger", headers=auth)).status_code == 200
    await wait_for_logs(client, "churned", auth)
    before = await scrape(client)
    assert has(before, "jobs_gateway_runs_finished_total", job_id="churned")
    # Prometheus' target label `job` would rename ours to `exported_job`: per-job series say `job_id`.
    assert not any("job" in labels for _, labels, _ in samples(before))
    assert (await client.delete("/api/jobs/churned", headers=auth)).status_code == 204
    assert "churned" not in await scrape(client)


async def test_unknown_paths_share_one_series(client: httpx.AsyncClient) -> None:
    for n in range(3):
        assert (await client.get(f"/no/such/path/{n}")).status_code == 404
    text = await scrape(client)
    assert value(text, "jobs_gateway_http_requests_total", route="<unmatched>", status="404") >= 3
    assert not has(text, "jobs_gateway_http_requests_total", route="/no/such/path/0")


async def test_scheduled_fires_record_lag_and_overlapping_fires_are_counted_as_skipped(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    before = await scrape(client)
    # Fires every second, each run lasting 2.5 s: at least one fire finds the previous run going.
    job = {"id": "ticker", "name": "Ticker", "type": "test_sleep", "interval": "1s", "payload": {"seconds": 2.5}}
    assert (await client.post("/api/jobs", json=job, headers=auth)).status_code == 201

    async def skipped() -> bool:
        text = await scrape(client)
        return value(text, "jobs_gateway_fires_skipped_total", job_id="ticker", reason="overlap") > value(
            before, "jobs_gateway_fires_skipped_total", job_id="ticker", reason="overlap"
        )

    await wait_until(skipped, timeout=20, interval=0.2)
    assert (await client.patch("/api/jobs/ticker", json={"enabled": False}, headers=auth)).status_code == 200
    after = await scrape(client)
    assert value(after, "jobs_gateway_runs_started_total", job_id="ticker", trigger="scheduler") >= 1
    lag_count = value(after, "jobs_gateway_scheduler_lag_seconds_count") - value(
        before, "jobs_gateway_scheduler_lag_seconds_count"
    )
    lag_sum = value(after, "jobs_gateway_scheduler_lag_seconds_sum") - value(
        before, "jobs_gateway_scheduler_lag_seconds_sum"
    )
    assert lag_count >= 1
    print(f"scheduler lag: {lag_count:g} fires, mean {lag_sum / lag_count * 1000:.1f} ms")
    await wait_for_logs(client, "ticker", auth, timeout=15)
    await asyncio.sleep(0)


async def test_a_hub_subscription_is_counted_while_it_is_open(client: httpx.AsyncClient, app_client: object) -> None:
    app = app_client[0]  # type: ignore[index]
    hub = app.state.hub
    baseline = value(await scrape(client), "jobs_gateway_live_subscriptions")
    box = hub.open(None)
    try:
        assert value(await scrape(client), "jobs_gateway_live_subscriptions") == baseline + 1
    finally:
        hub.close(box)
    assert value(await scrape(client), "jobs_gateway_live_subscriptions") == baseline


async def test_metrics_can_be_turned_off(settings_factory: Callable[..., Settings]) -> None:
    async with running_app(settings_factory(metrics_enabled=False)) as (_, client):
        response = await client.get("/metrics")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


async def test_the_queue_depth_counts_triggers_waiting_for_a_worker_as_well_as_fires(
    settings_factory: Callable[..., Settings],
) -> None:
    """With no worker running, a trigger waits in the trigger list: it is work waiting, as much as a queued fire."""
    settings = settings_factory(embedded_worker=False)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    async with running_app(settings) as (_, client):
        await make_job(id="waiting", enabled=False)
        before = value(await scrape(client), "jobs_gateway_queue_depth")
        assert (await client.post("/api/jobs/waiting/trigger", headers=auth)).status_code == 200
        assert value(await scrape(client), "jobs_gateway_queue_depth") == before + 1
        await make_job(id="scheduled", schedule="@daily")
        assert (await client.post("/api/jobs/scheduled/start", headers=auth)).status_code == 200  # one fire queued
        assert value(await scrape(client), "jobs_gateway_queue_depth") == before + 2


async def test_a_standalone_workers_queue_depth_counts_waiting_triggers_too(
    settings_factory: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = settings_factory(embedded_worker=False, worker_metrics_port=port)
    auth = {"Authorization": f"Bearer {make_token(settings)}"}
    server = WorkerMetricsServer.start(settings)
    assert server is not None
    try:
        async with running_app(settings) as (_, client), httpx.AsyncClient(timeout=5) as scraper:
            await make_job(id="waiting", enabled=False)
            before = value((await scraper.get(f"http://127.0.0.1:{port}/metrics")).text, "jobs_gateway_queue_depth")
            assert (await client.post("/api/jobs/waiting/trigger", headers=auth)).status_code == 200
            after = value((await scraper.get(f"http://127.0.0.1:{port}/metrics")).text, "jobs_gateway_queue_depth")
            assert after == before + 1
    finally:
        server.close()
