"""Judges: the deterministic rubric, the OpenAI-compatible API judge against a loopback server this test starts on
127.0.0.1 (retries, cache, pairwise both orders, the key never written anywhere), and judge agreement."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from atlas_core.evidence import judges
from atlas_core.evidence.judges import ApiJudge, JudgeError, RubricJudge, rank_agreement, token_f1

SECRET = "sk-test-9f8e7d6c5b4a-never-store-me"


# ---------------------------------------------------------------- the rubric judge

def test_rubric_prefers_the_right_short_answer():
    j = RubricJudge()
    right, wrong = j.score("q", "Paris", "Paris"), j.score("q", "Berlin", "Paris")
    assert right == pytest.approx(10.0) and wrong < 5 < right
    assert j.score("q", "It is Paris, I think", "Paris") < right  # contains the answer: half credit on exactness
    assert j.parts("q", "It is Paris, I think", "Paris")["exact"] == 0.5


def test_rubric_checks_json_exactly_and_long_references_by_overlap():
    j = RubricJudge()
    ref = '{"name": "Ann", "age": 3}'
    assert j.parts("q", ' {"age": 3, "name": "Ann"} trailing', ref)["exact"] == 1.0
    assert j.parts("q", '{"name": "Bob", "age": 3}', ref)["exact"] == 0.0
    long_ref = "the river flows north through the old town and into the sea"
    p = j.parts("q", "the river flows north into the sea", long_ref)
    assert p["exact"] is None and 0 < p["overlap"] < 1


def test_rubric_penalizes_format_length_and_repetition():
    j = RubricJudge()
    clean = j.score("q", "doctor", "doctor")
    assert j.score("q", "doctor\nUser: and now?", "doctor") < clean  # leaked role marker
    assert j.score("q", "doctor " + "and so on " * 12, "doctor") < clean  # long and looping
    assert j.parts("q", "doctor " + "and so on " * 12, "doctor")["repetition"] > 0
    assert j.score("q", "", "doctor") == pytest.approx(1.0)  # empty: the floor
    scores = [j.score("q", a, "doctor") for a in ("doctor", "a doctor", "nurse", "", "x " * 50)]
    assert all(1.0 <= s <= 10.0 for s in scores)
    assert scores == [j.score("q", a, "doctor") for a in ("doctor", "a doctor", "nurse", "", "x " * 50)]


def test_token_f1():
    assert token_f1("a b c", "a b c") == 1.0
    assert token_f1("", "a") == 0.0
    assert token_f1("a b", "a c") == pytest.approx(0.5)


def test_score_batch_matches_score():
    j = RubricJudge()
    items = [("q", "Paris", "Paris"), ("q", "Rome", "Paris")]
    assert j.score_batch(items) == [j.score(*it) for it in items]


# ---------------------------------------------------------------- agreement

def test_rank_agreement_exact_and_monte_carlo():
    a = [1, 2, 3, 4, 5, 6]
    r = rank_agreement(a, [10, 20, 30, 40, 50, 60])
    assert r["spearman"] == pytest.approx(1.0) and r["exact"] and r["n"] == 6
    assert r["p_value"] == pytest.approx(2 / 720)  # only the identity and its reverse are as extreme
    assert r["spearman_lo"] <= r["spearman"] <= r["spearman_hi"] or r["spearman"] == pytest.approx(1.0)
    neg = rank_agreement(a, [6, 5, 4, 3, 2, 1])
    assert neg["spearman"] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=40)
    z = rank_agreement(x, y)
    assert not z["exact"] and z["p_value"] > 0.05 and z["spearman_lo"] < z["spearman"] < z["spearman_hi"]
    assert z["spearman_lo"] < 0 < z["spearman_hi"]
    assert np.isnan(rank_agreement([1, 1, 1, 1], [1, 2, 3, 4])["spearman"])  # constant: no order
    assert rank_agreement([1, np.nan, 3, 4, 5], [1, 2, 3, 4, 5])["n"] == 4  # NaN pairs dropped


# ---------------------------------------------------------------- the API judge on a loopback server

class Server:
    """A chat-completions stand-in on 127.0.0.1: fails the first `fail` requests with `code`, then replies with
    `reply(user_message)`; records every request's headers and body."""

    def __init__(self, reply, fail: int = 0, code: int = 503):
        self.reply, self.fail, self.code, self.requests = reply, fail, code, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])).decode())
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(outer.code)
                    self.end_headers()
                    return
                text = outer.reply(body["messages"][-1]["content"])
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _all_text(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_api_judge_scores_retries_and_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATLAS_JUDGE_KEY", SECRET)
    with Server(lambda msg: "Correct and concise. Rating: [[7]]", fail=2) as srv:
        j = ApiJudge(srv.url, "judge-model", backoff=0.01, cache_dir=tmp_path / "cache")
        assert j.score("What is 2+2?", "4", "4") == 7.0
        assert len(srv.requests) == 3  # two 503s retried, then the answer
        req = srv.requests[-1]
        assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "judge-model"
        assert req["headers"]["Authorization"] == f"Bearer {SECRET}"  # the key goes in the header, only there
        user = req["body"]["messages"][-1]["content"]
        assert "[Reference answer]\n4" in user and "1 to 10" in user
        assert j.score("What is 2+2?", "4", "4") == 7.0
        assert len(srv.requests) == 3  # second time from the cache: nothing sent
        j.score("What is 2+2?", "5", "4")
        assert len(srv.requests) == 4  # other content, other cache entry
    assert list((tmp_path / "cache").glob("*.json"))
    assert SECRET not in _all_text(tmp_path) and SECRET not in repr(j) and SECRET not in json.dumps(vars(j), default=str)
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err


def test_api_judge_gives_up_in_one_line_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_JUDGE_KEY", SECRET)
    with Server(lambda msg: "Rating: [[9]]", fail=10, code=503) as srv:
        j = ApiJudge(srv.url, "m", retries=2, backoff=0.0, cache_dir=tmp_path)
        with pytest.raises(JudgeError) as err:
            j.score("q", "a", "r")
        assert len(srv.requests) == 3 and "HTTP 503" in str(err.value) and SECRET not in str(err.value)
    with Server(lambda msg: "Rating: [[9]]", fail=1, code=401) as srv:
        j = ApiJudge(srv.url, "m", retries=3, backoff=0.0, cache_dir=tmp_path)
        with pytest.raises(JudgeError, match="HTTP 401"):
            j.score("q", "a", "r")
        assert len(srv.requests) == 1  # a client error is not retried
    assert SECRET not in _all_text(tmp_path)


def test_api_judge_unparseable_reply_is_nan(tmp_path):
    with Server(lambda msg: "I would rather not say.") as srv:
        assert np.isnan(ApiJudge(srv.url, "m", cache_dir=tmp_path).score("q", "a", "r"))


def test_pairwise_asks_both_orders_and_exposes_position_bias(tmp_path):
    with Server(lambda msg: "The first one. [[A]]") as srv:  # a judge that always prefers the first answer
        res = ApiJudge(srv.url, "m", cache_dir=tmp_path).prefer("q", "good", "bad", "good")
        assert len(srv.requests) == 2
        firsts = [r["body"]["messages"][-1]["content"] for r in srv.requests]
        assert firsts[0].index("good") < firsts[0].index("bad") and firsts[1].index("bad") < firsts[1].index("[Answer B]")
        assert res["p_a"] == 0.5 and not res["consistent"]

    def fair(msg: str) -> str:  # prefers whichever slot holds "good"
        return "[[A]]" if msg.split("[Answer A]\n")[1].startswith("good") else "[[B]]"
    with Server(fair) as srv:
        res = ApiJudge(srv.url, "m", cache_dir=tmp_path / "2").prefer("q", "good", "bad", "good")
        assert res["p_a"] == 1.0 and res["consistent"]


def test_from_env(monkeypatch):
    for v in judges.ENV.values():
        monkeypatch.delenv(v, raising=False)
    assert ApiJudge.from_env() is None
    monkeypatch.setenv("ATLAS_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ATLAS_JUDGE_MODEL", "m")
    monkeypatch.setenv("ATLAS_JUDGE_KEY", SECRET)
    j = ApiJudge.from_env()
    assert j is not None and j.model == "m" and SECRET not in repr(j)
    assert os.environ["ATLAS_JUDGE_KEY"] == SECRET
