"""benchmarks/serve_throughput.py against a running OpenAI-compatible server (--backend-url): the server's own
single-turn answers and riselm serve as a proxy in front of it, through real servers on localhost."""

import json
import re
import sys

from riselm.generation.fake import ScriptedGenerator
from riselm.serve import ServeSettings, create_app
from riselm.tasks import get_task
from tests.bench import load_benchmark


def test_backend_url_measures_the_server_and_the_proxy_in_front_of_it(monkeypatch, capsys, tmp_path):
    bench = load_benchmark("serve_throughput")

    def script(conversation, sample):  # right exactly when the first operand is even, whatever the seed
        a, b = map(int, re.search(r"(\d+)\+(\d+)", conversation[0]["content"]).groups())
        return f"\\boxed{{{a + b + a % 2}}}"

    # the "backend server": a single-turn riselm server on that scripted model
    backend = create_app(ScriptedGenerator(script), ServeSettings(turns=1, max_queue=64), model_name="inner")
    url, stop = bench.running(backend)
    argv = ["serve_throughput.py", "--problems", "6", "--concurrency", "3", "--backend-url", f"{url}/v1", "--backend-model", "inner"]
    monkeypatch.setattr(sys, "argv", [*argv, "--skip-local", "--output", str(tmp_path / "serve.md")])
    try:
        bench.main()
    finally:
        stop()
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(rows) == ["server", "server K=1", "server K=3", "server K=5", "server K=5 stable2"]
    problems = get_task("arithmetic", digits=2).load("test", limit=6)
    expected = round(100 * sum(int(re.search(r"(\d+)\+", p.question).group(1)) % 2 == 0 for p in problems) / 6, 1)
    assert 0 < expected < 100 and rows["server"]["accuracy"] == rows["server K=1"]["accuracy"] == expected
    assert rows["server K=1"]["mean_turns"] == 1.0 and rows["server K=5 stable2"]["mean_turns"] == 2.0
    assert rows["server K=3"]["mean_turns"] == 3.0 and rows["server K=3"]["requests"] == 6
    assert "| server K=3 |" in (tmp_path / "serve.md").read_text()
