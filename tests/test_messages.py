"""Messages that tell the user what to do (docs/api.md §0.1, §6): a service that cannot start says why from the
instance itself, a broken token file is named with its line, HTML error pages show only what is known."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningRouter, backend_token

TOKEN = {"x-waiter-token": "echo"}
JSON = {"accept": "application/json"}


async def deployment_error(r: RunningRouter) -> str:
    headers = {**TOKEN, **JSON, "x-waiter-queue-timeout": "60000"}
    async with r.client.get(r.url + "/hello", headers=headers) as resp:
        assert resp.status == 503, await resp.text()
        message: str = (await resp.json())["waiter-error"]["message"]
    return message


async def test_a_command_that_does_not_exist_is_named_from_the_instances_stderr(make_router) -> None:
    r = await make_router([backend_token("echo", cmd="nosuchbinary --serve")])
    message = await deployment_error(r)
    assert message.startswith("Deployment error: Invalid startup command (every instance exited with code 127)")
    assert "nosuchbinary: command not found" in message
    sid = await r.service_id(TOKEN)
    (failed, *_) = (await r.instances(sid))["failed-instances"]
    assert f"({failed['log-directory']}/stderr)" in message or "/stderr)" in message
    (app,) = await r.get_json("/apps")
    assert app["deployment-error-message"] == message


async def test_an_instance_that_never_listens_names_its_port_after_one_grace_period(make_router) -> None:
    r = await make_router([backend_token("echo", cmd="exec sleep 600", **{"grace-period-secs": 1})])
    message = await deployment_error(r)
    sid = await r.service_id(TOKEN)
    failed: list[dict[str, Any]] = (await r.instances(sid))["failed-instances"]
    assert len(failed) == 1  # one grace period was enough to say so
    assert message.startswith("Deployment error: Unable to connect to run health checks")
    assert f"was given $PORT0 = {failed[0]['port']}" in message
    assert "GET /status" in message and "grace period of 1 seconds" in message


async def test_a_token_whose_file_does_not_parse_is_a_503_naming_file_and_line(make_router) -> None:
    r = await make_router([backend_token("echo")])
    broken = r.tokens_dir / "broken.yaml"
    broken.write_text("token: broken\ncmd: [unclosed\n")
    r.router.tokens.files.load()
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "broken", **JSON}) as resp:
        assert resp.status == 503
        message = (await resp.json())["waiter-error"]["message"]
    assert f"Token broken could not be loaded from its file: {broken}, line" in message
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "missing", **JSON}) as resp:
        assert resp.status == 404  # a token no file defines is still unknown


async def test_html_error_pages_show_only_known_fields_and_status_counts_tokens(make_router) -> None:
    r = await make_router([backend_token("echo"), backend_token("other")])
    async with r.client.get(r.url + "/hello", headers={"x-waiter-token": "nope", "accept": "text/html"}) as resp:
        assert resp.status == 404
        page = await resp.text()
    assert "<th>uri</th>" in page
    assert "query-string" not in page and "None" not in page
    async with r.client.post(r.url + "/token", json=backend_token("stored")) as resp:
        assert resp.status == 200, await resp.text()
    status = await r.get_json("/status")
    assert status["tokens"] == {"total": 3, "files": 2, "stored": 1}
