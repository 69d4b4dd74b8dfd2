"""The web server against careless and hostile requests: every bad body is a 4xx with one short
message naming the value, never a 500; no request can hold the only worker for hours; and the page
answers only to the host names it was told."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from undiffuse.cli import main  # noqa: E402
from undiffuse.errors import RequestError  # noqa: E402
from undiffuse.generation import load_run  # noqa: E402
from undiffuse.serve import LOCAL_HOSTS, make_app  # noqa: E402
from undiffuse.serve import requests  # noqa: E402

MAX_MESSAGE = 300


@pytest.fixture(scope="module")
def run(trained):
    return load_run(trained)


@pytest.fixture(scope="module")
def client(run):
    with TestClient(make_app(run)) as c:
        yield c


def refused(response, status=400, words=""):
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert words in message and len(message) < MAX_MESSAGE and "Traceback" not in message
    return message


@pytest.mark.parametrize("raw, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"n": NaN}', "NaN is not a number"),
    ('{"guidance": Infinity}', "Infinity is not a number"),
    ('{"steps": -Infinity}', "Infinity is not a number"),
    ('{"steps": 1e400}', "too large a number"),
    ('{"n": 2, "n": 3, "seed": 1e999}', "too large a number"),
    ("{\"label\": \"\\ud800\"}", ""),  # a lone surrogate: either refused as JSON or as a label
    ('{"n": 1', "not valid JSON"),
])
def test_malformed_json_is_a_400(client, raw, words):
    refused(client.post("/api/generate", content=raw, headers={"content-type": "application/json"}), 400, words)


@pytest.mark.parametrize("body, words", [
    ({"label": [3]}, "label must be text"),
    ({"sampler": ["ddim"]}, "sampler must be text"),
    ({"context": {"a": 1}}, "context must be text"),
    ({"show": ["x"]}, "show must be one of"),
    ({"n": "4"}, "n must be a whole number"),
    ({"n": [4]}, "n must be a whole number"),
    ({"steps": True}, "steps must be a whole number"),
    ({"seed": 2 ** 70}, "seed must lie in"),
    ({"guidance": "x" * 100_000}, "guidance must be a number"),
    ({"steps": "9" * 100_000}, "steps must be a whole number"),
    ({"sampler": "x" * 100_000}, "unknown sampler"),
    ({"label": "nan*3"}, ""),
    ({"context": "nan*3"}, "not a finite"),
    ({"context": "inf,0,0,0,0,0,0,0,0,0"}, "not a finite"),
    ({"context": "1e400*3"}, "not a finite"),
])
def test_values_of_the_wrong_kind_are_named_in_a_short_message(client, body, words):
    refused(client.post("/api/generate", json=body), 400, words)


def test_half_a_million_unknown_keys_get_a_short_answer(client):
    body = {f"key{i}": i for i in range(500_000)}
    message = refused(client.post("/api/generate", json=body), 400, "unknown field(s)")
    assert "and 499995 more" in message


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"n": 65, "sampler": "ddpm"}),
    ("/api/generate", {"n": 64, "sampler": "heun", "steps": 1000}),
    ("/api/inpaint", {"n": 64, "steps": 1000, "resample": 20, "jump": 10, "image": "x", "mask": "x"}),
    ("/api/img2img", {"n": 64, "strength": 1.0, "sampler": "heun", "steps": 1000, "image": "x"}),
])
def test_no_request_holds_the_worker_for_hours(client, path, body):
    response = client.post(path, json=body)
    refused(response, 400, "network calls" if body["n"] <= 64 else "n must lie")


def test_the_largest_plain_request_is_within_the_bound(run):
    job = requests.parse_generate(run, {"n": 64, "sampler": "ddpm", "label": "none"})  # one branch
    assert job.n * job.total == requests.MAX_WORK
    with pytest.raises(RequestError, match="64 images x 2,000 network calls"):  # guided: two branches a step
        requests.parse_generate(run, {"n": 64, "sampler": "ddpm", "label": "3"})


def test_the_page_states_the_bound(client):
    assert client.get("/api/info").json()["limits"]["work"] == requests.MAX_WORK
    assert 'id="work-limit"' in client.get("/").text


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)
fields = st.sampled_from(sorted(requests.COMMON | {"sampler", "steps", "strength", "method", "resample", "jump",
                                                   "image", "mask", "extra"}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(fields, json_values, max_size=6), kind=st.sampled_from(["generate", "inpaint", "img2img"]))
def test_fuzzed_request_bodies_become_a_job_or_a_request_error(run, body, kind):
    parse = {"generate": requests.parse_generate, "inpaint": requests.parse_inpaint, "img2img": requests.parse_img2img}
    try:
        job = parse[kind](run, body)
    except RequestError as e:
        assert 400 <= e.status < 500 and len(str(e)) < MAX_MESSAGE
    else:
        assert 1 <= job.n <= requests.MAX_N and job.n * job.total <= requests.MAX_WORK


def test_a_huge_whole_float_is_quoted_short(run):
    """1e300 is a whole number, and its int() has 301 digits: the message quotes what was sent instead."""
    with pytest.raises(RequestError, match=r"n must lie in \[1, 64\], got 1e\+300$") as caught:
        requests.parse_generate(run, {"n": 1e300})
    assert len(str(caught.value)) < MAX_MESSAGE


@pytest.fixture(scope="module")
def sr(sr_run):
    return load_run(sr_run)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(["image", "n", "seed", "sampler", "steps", "aug", "show", "label"]),
                            json_values, max_size=6))
def test_fuzzed_upscale_bodies_become_a_job_or_a_request_error(sr, body):
    try:
        job = requests.parse_upscale(sr, body)
    except RequestError as e:
        assert 400 <= e.status < 500 and len(str(e)) < MAX_MESSAGE
    else:
        assert 1 <= job.n <= requests.MAX_N and job.n * job.total <= requests.MAX_WORK


def test_no_upscale_request_holds_the_worker_for_hours(sr):
    with pytest.raises(RequestError, match="network calls"):
        requests.parse_upscale(sr, {"n": 64, "sampler": "heun", "steps": 1000, "image": "x"})


def test_the_page_answers_only_its_own_host_names(run):
    app = make_app(run, allowed_hosts=[*LOCAL_HOSTS, "box.local"])
    for base, ok in (("http://localhost", True), ("http://box.local", True), ("http://evil.example", False)):
        with TestClient(app, base_url=base) as c:
            assert (c.get("/api/info").status_code == 200) == ok


def test_binding_beyond_loopback_warns_and_keeps_a_host_allow_list(trained, monkeypatch, capsys):
    from undiffuse.cli import serve as serve_command

    seen = {}
    monkeypatch.setattr(serve_command, "_serve", lambda app, sock: seen.setdefault("app", app))
    assert main(["serve", str(trained), "--host", "0.0.0.0", "--port", "0", "--allow-host", "box.local"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning: listening on 0.0.0.0" in err[0] and "box.local" in err[0]
    with TestClient(seen["app"], base_url="http://evil.example") as c:
        assert c.get("/api/info").status_code == 400  # DNS rebinding finds no page
    assert serve_command.allowed_hosts("10.0.0.7", []) == [*LOCAL_HOSTS, "10.0.0.7"]
    assert main(["serve", str(trained), "--allow-host", "a/b"]) == 2
