"""The official OpenAI Python SDK against Sluice's OpenAI-compatible API.

Starts the fake upstream and the real `sluice` binary (both built by cargo),
points `OpenAI(base_url=..., api_key=TOKEN)` at Sluice, and checks that
streaming, usage, non-streaming, errors and model listing behave as the SDK
expects. With SLUICE_CLUSTER_URL set (nginx in front of replicas started by
scripts/cluster, with the fake upstream and `fake:tokens=25` as the default
model), the same checks also run through the cluster, and with
SLUICE_REPLICA_URLS (its replicas, space-separated) a response is continued
on another replica than the one that made it. Run by scripts/test; prints
`N passed, N failed`.
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import openai
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
SECRET = "sdk-test-secret-0123456789"


def expected(n):
    return "".join(f"<{i}>" for i in range(n))


class Processes:
    """The fake upstream and a sluice, stopped by pid at the end."""

    def __init__(self, jwt):
        self.children = []
        fake = self.spawn([BIN / "fake-upstream"], dict(os.environ))
        self.upstream = fake.stdout.readline().strip()
        self.data = tempfile.TemporaryDirectory()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "SLUICE_ADDR": "127.0.0.1:0",
            "SLUICE_DATA_DIR": self.data.name,
            "SLUICE_LOG_FORMAT": "json",
            "SLUICE_LLM_BASE_URL": self.upstream,
            "SLUICE_LLM_MODEL": "fake:tokens=25",
        }
        if jwt:
            env["SLUICE_JWT_SECRET"] = SECRET
        sluice = self.spawn([BIN / "sluice"], env)
        for line in sluice.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "listening":
                self.base_url = f"http://{record['addr']}/v1"
                break
        else:
            raise RuntimeError("sluice did not start")

    def spawn(self, argv, env):
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.children.append(child)
        return child

    def close(self):
        for child in self.children:
            child.kill()
            child.wait()
        self.data.cleanup()


def mint(sub):
    out = subprocess.run(
        [BIN / "sluice", "token", "--sub", sub, "--ttl", "10m"],
        env={"PATH": os.environ.get("PATH", ""), "SLUICE_JWT_SECRET": SECRET},
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_streaming(client):
    stream = client.chat.completions.create(
        model="fake:tokens=30",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == expected(30), text


def test_streaming_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="fake:tokens=12",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_non_streaming_and_default_model(client):
    completion = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], model="")
    assert completion.choices[0].message.content == expected(25)
    assert completion.usage.completion_tokens == 25


def test_upstream_error_is_raised(client):
    try:
        client.chat.completions.create(
            model="fake:status=500", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    except openai.APIStatusError as e:
        assert e.status_code == 502, e.status_code
        assert e.code == "upstream_error", e.body
    else:
        raise AssertionError("no error raised")


def test_provider_refusal_is_raised_as_such(client):
    # The provider's 404 reaches the SDK as its own error, which SDKs do not
    # retry (a 502 they would, three times).
    try:
        client.chat.completions.create(model="fake:status=404", messages=[{"role": "user", "content": "hi"}])
    except openai.NotFoundError as e:
        assert e.code == "fake_refusal", e.body
        assert e.param == "model", e.body
    else:
        raise AssertionError("no error raised")


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["fake:tokens=25"]
    assert client.models.retrieve("fake:tokens=25").id == "fake:tokens=25"


def test_files(client):
    text = b"The pilot boat leaves at dawn from quay seven.\n"
    created = client.files.create(file=("pilot.md", text), purpose="assistants")
    assert created.id and created.filename == "pilot.md", created
    assert created.bytes == len(text), created
    assert client.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in client.files.list().data]
    assert client.files.content(created.id).read() == text
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id, deleted
    try:
        client.files.retrieve(created.id)
    except openai.NotFoundError as e:
        assert e.code == "not_found", e.body
    else:
        raise AssertionError("a deleted file was found")


def test_embeddings(client):
    result = client.embeddings.create(model="fake-embed", input=["pilot boat", "quay seven"])
    assert len(result.data) == 2, result
    assert len(result.data[0].embedding) > 0
    assert [d.index for d in result.data] == [0, 1]


class Cluster:
    """An already running cluster (scripts/cluster), in local mode."""

    def __init__(self, url):
        self.base_url = f"{url}/v1"

    def close(self):
        pass


CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Evaluates arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}


def test_client_tools_are_relayed(client):
    """The OpenAI-compatible route is a relay: a client that sends `tools`
    gets the provider's tool calls and runs its own tools (the SDK's
    tool-calling flow, streamed and not)."""
    script = json.dumps({"steps": [[{"name": "calc", "arguments": {"expression": "6*7"}}]]})
    messages = [{"role": "user", "content": script}]
    stream = client.chat.completions.create(
        model="fake:tools,tokens=4", messages=messages, tools=[CALCULATOR], stream=True
    )
    calls = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls", finish
    assert calls[0]["name"] == "calc" and calls[0]["id"] == "call_0_0", calls
    assert json.loads(calls[0]["arguments"]) == {"expression": "6*7"}
    # The client runs its tool and sends the result back.
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0]["id"], "type": "function",
         "function": {"name": "calc", "arguments": calls[0]["arguments"]}}]})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "42"})
    answer = client.chat.completions.create(model="fake:tools,tokens=4", messages=messages, tools=[CALCULATOR])
    assert answer.choices[0].message.content == expected(4)
    assert answer.choices[0].finish_reason == "stop"
    # Not streamed, the calls come whole.
    whole = client.chat.completions.create(model="fake:tools", messages=messages[:1], tools=[CALCULATOR])
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.tool_calls[0].function.name == "calc"


def test_responses(client):
    """`client.responses`: whole and streamed, a follow-up turn with
    `previous_response_id`, retrieval, deletion, and a function tool's round
    trip, streamed through the SDK's own stream helper."""
    first = client.responses.create(model="fake:tokens=5", input="My name is Ada.", instructions="Be brief.")
    assert first.status == "completed" and first.output_text == expected(5), first
    assert first.usage.output_tokens == 5
    events = list(client.responses.create(model="fake:tokens=4", input="again", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == expected(4) == events[-1].response.output_text, deltas
    follow = client.responses.create(model="fake:tokens=3", input="What is my name?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id and follow.output_text == expected(3)
    assert client.responses.retrieve(follow.id).model_dump() == follow.model_dump()
    script = json.dumps({"steps": [[{"name": "calc", "arguments": {"expression": "6*7"}},
                                    {"name": "calc", "arguments": {"expression": "1+1"}}]]})
    tool = {"type": "function", "name": "calc", "description": "arithmetic",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}
    with client.responses.stream(model="fake:tools,preamble=1,tokens=2", input=script, tools=[tool]) as stream:
        for _ in stream:
            pass
        called = stream.get_final_response()
    calls = [o for o in called.output if o.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"expression": "6*7"}, {"expression": "1+1"}], called
    answered = client.responses.create(
        model="fake:tools,tokens=2", tools=[tool], previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": c.call_id, "output": out}
               for c, out in zip(calls, ["42", "2"])])
    assert answered.output_text == expected(2), answered
    client.responses.delete(answered.id)
    try:
        client.responses.retrieve(answered.id)
        raise AssertionError("a deleted response was found")
    except openai.NotFoundError:
        pass


def test_responses_across_replicas(client):
    """In the cluster: a response made by one replica is continued, streamed,
    and read back by another (each replica asked directly, past nginx)."""
    urls = os.environ["SLUICE_REPLICA_URLS"].split()
    one, two = (OpenAI(base_url=f"{u}/v1", api_key=client.api_key, max_retries=0) for u in urls[:2])
    first = one.responses.create(model="fake:tokens=3", input="My name is Ada.")
    with two.responses.stream(model="fake:tokens=2", input="What is my name?",
                              previous_response_id=first.id) as stream:
        follow = stream.get_final_response()
    assert follow.previous_response_id == first.id and follow.output_text == expected(2), follow
    assert one.responses.retrieve(follow.id).output_text == expected(2)


def main():
    passed = failed = 0
    modes = ["local", "jwt"] + (["cluster"] if os.environ.get("SLUICE_CLUSTER_URL") else [])
    for mode in modes:
        jwt = mode == "jwt"
        procs = Cluster(os.environ["SLUICE_CLUSTER_URL"]) if mode == "cluster" else Processes(jwt)
        try:
            token = mint("sdk-user") if jwt else "local"
            client = OpenAI(base_url=procs.base_url, api_key=token, max_retries=0)
            tests = [test_streaming, test_streaming_usage, test_non_streaming_and_default_model,
                     test_upstream_error_is_raised, test_provider_refusal_is_raised_as_such, test_models,
                     test_files, test_embeddings, test_client_tools_are_relayed, test_responses]
            if mode == "cluster":
                tests.append(test_responses_across_replicas)
            for test in tests:
                name = f"{test.__name__}[{mode}]"
                try:
                    test(client)
                    passed += 1
                    print(f"ok     {name}")
                except Exception:
                    failed += 1
                    print(f"FAILED {name}")
                    traceback.print_exc()
            if jwt:
                bad = OpenAI(base_url=procs.base_url, api_key="not-a-token", max_retries=0)
                try:
                    bad.models.list()
                    failed += 1
                    print("FAILED a bad token is refused")
                except openai.AuthenticationError as e:
                    assert e.code == "unauthorized"
                    passed += 1
                    print("ok     a bad token is refused")
        finally:
            procs.close()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
