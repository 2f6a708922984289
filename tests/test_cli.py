"""The herald command as a person runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import POLICIES, ROOT
from tests.e2e.conftest import KEYS
from tests.helpers import HERALD, free_port, herald_serve


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    data_dir: Path
    policy_dir: Path

    def run(self, *args: str, bu: str = "order", check: bool = False) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "HERALD_API_KEY": KEYS[bu]}
        result = subprocess.run([*HERALD, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port, admin = free_port(), free_port()
    policy_dir = tmp_path / "policies"
    shutil.copytree(POLICIES, policy_dir)
    env = {
        **os.environ,
        "HERALD_LISTEN": f"127.0.0.1:{port}",
        "HERALD_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_POLICY_DIR": str(policy_dir),
        "HERALD_TARGET": f"127.0.0.1:{port}",
    }
    env.pop("HERALD_REDIS_URL", None)
    log = tmp_path / "serve.log"
    with herald_serve(env, log, stop=signal.SIGKILL) as proc:
        yield Served(proc, env, log, tmp_path / "var", policy_dir)


def test_import_send_status_on_the_embedded_defaults(served: Served) -> None:
    imported = served.run("users", "import", "examples/users.csv", "--quiet")
    assert imported.returncode == 0, imported.stderr
    assert "4 of 4 rows imported, 0 rejected" in imported.stdout

    sent = served.run(
        "send",
        "-s",
        "order.shipped",
        "-u",
        "u-1001",
        "-p",
        "order_id=O-1",
        "-p",
        "carrier=SF",
        "-p",
        "tracking_no=SF1",
        "--json",
        check=True,
    )
    answer = json.loads(sent.stdout)
    assert answer["outcome"] == "ACCEPTED"
    assert answer["channelPlan"] == ["WECHAT_TEMPLATE", "APP_PUSH", "SMS"]

    for _ in range(50):
        status = served.run("status", answer["messageId"], check=True)
        if "status: delivered" in status.stdout:
            break
        time.sleep(0.1)
    assert "status: delivered" in status.stdout
    assert "WECHAT_TEMPLATE [SANDBOX]" in status.stdout
    assert (served.data_dir / "outbox" / "WECHAT_TEMPLATE.jsonl").exists()

    human = served.run(
        "send",
        "-s",
        "order.shipped",
        "-u",
        "u-1002",
        "-p",
        "order_id=O-2",
        "-p",
        "carrier=SF",
        "-p",
        "tracking_no=SF2",
        check=True,
    )
    assert human.stdout.startswith("ACCEPTED  message m_")
    assert "plan:   SMS" in human.stdout  # u-1002 unfollowed: no WeChat


def test_policy_explain_prints_the_trace(served: Served) -> None:
    served.run("users", "import", "examples/users.csv", "--quiet", check=True)
    result = served.run(
        "policy",
        "explain",
        "-u",
        "u-1001",
        "-s",
        "price.drop",
        "-p",
        "item_name=kettle",
        "-p",
        "new_price=99",
        "--at",
        "2099-11-11T23:00:00+08:00",
        bu="growth",
        check=True,
    )
    assert "quiet hours 22:00-08:00" in result.stdout
    assert "SCHEDULED  explained, nothing sent" in result.stdout
    assert "deferred to 2099-11-12 08:" in result.stdout


def test_send_errors_are_explained(served: Served) -> None:
    bad = served.run("send", "-s", "order.shipped", "-u", "u-1", "-p", "order_id=O-1")
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT: params: scenario 'order.shipped' needs carrier, tracking_no" in bad.stderr
    denied = served.run("send", "-s", "coupon.flash", "-u", "u-1", bu="logistics")
    assert "PERMISSION_DENIED" in denied.stderr
    nokey = subprocess.run([*HERALD, "info"], env={**served.env, "HERALD_API_KEY": ""}, capture_output=True, text=True)
    assert nokey.returncode == 2 and "no API key" in nokey.stderr
    unreachable = subprocess.run(
        [*HERALD, "info", "--target", f"127.0.0.1:{free_port()}", "--api-key", "x"], capture_output=True, text=True
    )
    assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stderr


def test_import_reports_rejected_rows_with_line_numbers(served: Served, tmp_path: Path) -> None:
    rows = ["user_id,phone,email,following,openid"]
    for i in range(2500):
        rows.append(f"u-{i},+86139{i:08d},,true,oImport{i:021d}")
    rows[101] = "u-bad,12345,,true,"  # line 102: not E.164
    rows[2001] = "u-x,+8613900000000,,maybe,oImport000000000000000000001"  # line 2002: bad boolean
    rows.append("u-short")  # line 2502: fewer fields than the header
    path = tmp_path / "users.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.tsv"
    result = served.run("users", "import", str(path), "--batch", "300", "--rejects", str(rejects), bu="growth")
    assert result.returncode == 1
    assert "2,498 of 2,501 rows imported, 3 rejected" in result.stdout
    assert "line 102: user.phone: must be E.164" in result.stdout
    assert "line 2002: following: 'maybe' is not true/false" in result.stdout
    assert "12345" not in result.stdout  # the bad phone is not echoed
    assert "line 2502: has 1 fields; the header has 5" in result.stdout
    assert rejects.read_text().count("\n") == 3
    assert "rows/s" in result.stderr  # the progress line


def test_import_refuses_a_bad_header(served: Served, tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("user_id,phon\nu-1,+8613900000000\n", encoding="utf-8")
    result = served.run("users", "import", str(path))
    assert result.returncode == 2
    assert "unknown column(s) phon" in result.stderr


def test_import_json_lines(served: Served, tmp_path: Path) -> None:
    result = served.run("users", "import", "examples/users.jsonl", "--quiet", check=True)
    assert "2 of 2 rows imported" in result.stdout
    path = tmp_path / "bad.jsonl"
    path.write_text('{"userId": "u-1"}\nnot json\n{"userId": "u-2", "colour": "red"}\n', encoding="utf-8")
    result = served.run("users", "import", str(path), "--quiet")
    assert "line 2: not a User object" in result.stdout
    assert "line 3: not a User object" in result.stdout


def test_sighup_reloads_and_sigterm_flushes(served: Served) -> None:
    before = json.loads(served.run("info", "--json", check=True).stdout)["version"]
    path = served.policy_dir / "business_units.yaml"
    path.write_text(path.read_text().replace("weight: 40", "weight: 45"))
    served.proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        after = json.loads(served.run("info", "--json", check=True).stdout)["version"]
        if after != before:
            break
        time.sleep(0.1)
    assert after != before

    served.run("users", "import", "examples/users.csv", "--quiet", check=True)
    for i in range(20):
        served.run("send", "-s", "order.paid", "-u", "u-1001", "-p", f"order_id=O-{i}", "-p", "amount=9", check=True)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=15) == 0
    outbox = served.data_dir / "outbox" / "WECHAT_TEMPLATE.jsonl"
    assert len(outbox.read_text().splitlines()) == 20  # everything accepted was delivered before exit
    log = served.log.read_text(encoding="utf-8")
    assert '"event":"stopped"' in log
    assert "13900001001" not in log  # no phone number in the logs


def test_a_bad_policy_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("scenarios: {}\n")
    env = {**os.environ, "HERALD_POLICY_DIR": str(tmp_path), "HERALD_LISTEN": f"127.0.0.1:{free_port()}"}
    result = subprocess.run([*HERALD, "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "business_units: no file defines this section" in result.stderr


def test_bad_setting_is_named() -> None:
    env = {**os.environ, "HERALD_DELIVERY_WORKERS": "many"}
    result = subprocess.run([*HERALD, "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "HERALD_DELIVERY_WORKERS (--delivery-workers): 'many' is not a valid int" in result.stderr


def test_keys_new_prints_a_credentials_entry() -> None:
    result = subprocess.run([*HERALD, "keys", "new", "order"], cwd=ROOT, capture_output=True, text=True, check=True)
    key = result.stdout.splitlines()[1].strip("# ").strip()
    import hashlib

    assert f"sha256: {hashlib.sha256(key.encode()).hexdigest()}" in result.stdout


def test_worker_needs_redis() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HERALD_REDIS_URL"}
    result = subprocess.run([*HERALD, "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "worker needs the shared Redis queue" in result.stderr and "HERALD_REDIS_URL" in result.stderr


def test_import_tags_and_attributes(served: Served, tmp_path: Path) -> None:
    import grpc

    from herald.v1 import profile_pb2, profile_pb2_grpc

    served.run("users", "import", "examples/users.csv", "--quiet", check=True)
    served.run("users", "import", "examples/users.jsonl", "--quiet", check=True)
    path = tmp_path / "tags.csv"
    path.write_text("user_id,tags,attr.city\nu-9,a;b; ;a,宁波\n", encoding="utf-8")
    served.run("users", "import", str(path), "--tag-separator", ";", "--quiet", check=True)
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,attr.\nu-9,x\n", encoding="utf-8")
    refused = served.run("users", "import", str(bad))
    assert refused.returncode == 2 and "names no attribute" in refused.stderr
    with grpc.insecure_channel(served.env["HERALD_TARGET"]) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        metadata = (("authorization", f"Bearer {KEYS['order']}"),)

        def get(user_id: str) -> profile_pb2.User:
            return stub.GetUser(profile_pb2.GetUserRequest(user_id=user_id), metadata=metadata, timeout=10)

        first = get("u-1001")
        assert list(first.tags) == ["mom_baby", "vip"]
        assert dict(first.attributes) == {"city": "杭州", "gender": "f", "province": "浙江"}
        assert list(get("u-1003").tags) == []
        assert dict(get("u-1003").attributes) == {"city": "乌鲁木齐", "gender": "m", "province": "新疆"}
        assert (
            list(get("u-2001").tags) == ["double11", "qr:store_hz01"] and get("u-2001").attributes["language"] == "zh"
        )
        nine = get("u-9")
        assert list(nine.tags) == ["a", "b"] and dict(nine.attributes) == {"city": "宁波"}


def test_campaign_create_preview_start_and_report(served: Served, tmp_path: Path) -> None:
    rows = ["user_id,phone,tags,attr.province"]
    for n in range(300):
        rows.append(f"u-{n},+86139{n:08d},{'mom_baby' if n % 3 == 0 else 'other'},{'浙江' if n % 2 == 0 else '江苏'}")
    users = tmp_path / "users.csv"
    users.write_text("\n".join(rows) + "\n", encoding="utf-8")
    served.run("users", "import", str(users), "--quiet", check=True)
    preview = served.run("campaign", "preview", "tags any [mom_baby] and province = 浙江", bu="marketing", check=True)
    assert "exactly 50 users" in preview.stdout and "SMS" in preview.stdout
    created = served.run("campaign", "create", "examples/campaign.yaml", bu="marketing", check=True)
    assert "created d11-presale-mothers (DRAFT)" in created.stdout
    started = served.run("campaign", "start", "d11-presale-mothers", bu="marketing", check=True)
    assert "COMPLETED" in started.stdout and "in the audience 50" in started.stdout
    assert "users decided" in started.stderr  # the progress line
    report = served.run("campaign", "report", "d11-presale-mothers", bu="marketing", check=True)
    assert "variant" in report.stdout and "holdout" in report.stdout
    as_json = json.loads(served.run("campaign", "report", "d11-presale-mothers", "--json", bu="marketing").stdout)
    funnel = {row["variant"]: row for row in as_json["funnel"]}
    assert funnel["all"]["targeted"] + funnel.get("holdout", {"targeted": 0})["targeted"] == 50
    as_csv = served.run("campaign", "report", "d11-presale-mothers", "--csv", bu="marketing").stdout.splitlines()
    assert as_csv[0].startswith("variant,targeted,suppressed") and len(as_csv) >= 3
    again = served.run("campaign", "pause", "d11-presale-mothers", bu="marketing")
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr and "COMPLETED" in again.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nscenario: double11.presale\naudience: tags any [\ncolour: red\n", encoding="utf-8")
    refused = served.run("campaign", "create", str(bad), bu="marketing")
    assert refused.returncode == 2 and "unknown key(s) colour" in refused.stderr
    listed = served.run("campaign", "list", bu="marketing", check=True)
    assert "d11-presale-mothers" in listed.stdout and "COMPLETED" in listed.stdout


def test_users_history_shows_a_users_messages_and_the_log_id_of_their_decisions(served: Served) -> None:
    from gateway.masking import user_ref

    served.run("users", "import", "examples/users.csv", "--quiet", check=True)
    first = served.run("send", "-s", "order.paid", "-u", "u-1001", "-p", "order_id=O-1", "-p", "amount=9", "--json")
    paid = json.loads(first.stdout)["messageId"]
    args = ("-s", "order.shipped", "-u", "u-1001", "-p", "order_id=O-1", "-p", "carrier=SF", "-p", "tracking_no=SF1")
    shipped = json.loads(served.run("send", *args, "--dedup-key", "O-1", "--json", check=True).stdout)["messageId"]
    again = json.loads(served.run("send", *args, "--dedup-key", "O-1", "--json", check=True).stdout)["messageId"]
    served.run("send", "-s", "delivery.arrived", "-u", "u-1001", "-p", "order_id=O-1", bu="logistics", check=True)

    shown = served.run("users", "history", "u-1001", check=True).stdout
    ref = user_ref("u-1001")
    assert f"user u-1001  (log id user_ref={ref})  3 message(s), newest first" in shown
    lines = [line for line in shown.splitlines() if " m_" in line]
    assert [line.split()[-1] for line in lines] == [again, shipped, paid]  # not logistics'
    assert "SUPPRESSED/DUPLICATE" in lines[0] and "order.shipped" in lines[0]

    narrowed = served.run("users", "history", "u-1001", "--outcome", "suppressed", "--since", "1h", "--json")
    as_json = json.loads(narrowed.stdout)
    assert [m["messageId"] for m in as_json["messages"]] == [again] and as_json["user_ref"] == ref
    limited = served.run("users", "history", "u-1001", "--limit", "1", check=True).stdout
    assert again in limited and paid not in limited and "more: raise --limit" in limited
    assert "none kept" in served.run("users", "history", "u-1001", "--scenario", "checkin", check=True).stdout
    bad = served.run("users", "history", "u-1001", "--since", "yesterday")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr

    # The gateway's decision lines name the user by the same id, never by the user id.
    decisions = [
        json.loads(line) for line in served.log.read_text(encoding="utf-8").splitlines() if '"event":"decision"' in line
    ]
    assert {d["message_id"] for d in decisions if d["user_ref"] == ref} >= {paid, shipped, again}
    assert not any("u-1001" in json.dumps(d) for d in decisions)


def test_users_get_opt_out_export_and_delete(served: Served) -> None:
    served.run("users", "import", "examples/users.csv", "--quiet", check=True)
    sent = served.run("send", "-s", "order.paid", "-u", "u-1001", "-p", "order_id=O-1", "-p", "amount=9", "--json")
    message_id = json.loads(sent.stdout)["messageId"]

    shown = served.run("users", "get", "u-1001", check=True).stdout
    assert "tier champion" in shown and "tags:       mom_baby, vip" in shown
    assert "+86139****1001" in shown and "l***@example.com" in shown
    for whole in ("13900001001", "lin.wei@", "oSample0000000000000000001001", "sample-fcm-token-1001"):
        assert whole not in shown  # contact points masked; --json has them whole
    assert json.loads(served.run("users", "get", "u-1001", "--json", check=True).stdout)["phone"] == "+8613900001001"

    out = served.run("users", "opt-out", "u-1001", "--category", "marketing", "--channel", "sms", check=True)
    assert out.stdout.strip() == "user u-1001: opted out of marketing on SMS"
    out = served.run("users", "opt-out", "u-1001", "--channel", "EMAIL", check=True)
    assert "marketing on SMS" in out.stdout and "every category on EMAIL" in out.stdout
    back = served.run("users", "opt-in", "u-1001", "--category", "marketing", "--channel", "sms", check=True)
    assert back.stdout.strip() == "user u-1001: opted out of every category on EMAIL"
    assert served.run("users", "opt-out", "u-1001").returncode == 2  # neither category nor channel
    basic = served.run("users", "opt-out", "u-1001", "--category", "basic")
    assert basic.returncode == 1 and "cannot be opted out of" in basic.stderr
    denied = served.run("users", "opt-out", "u-1001", "--channel", "SMS", bu="marketing")
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr

    exported = json.loads(served.run("users", "export", "u-1001", check=True).stdout)
    assert exported["user"]["phone"] == "+8613900001001"
    assert [m["messageId"] for m in exported["messages"]] == [message_id]
    assert exported["user"]["optOuts"][0]["channel"] == "EMAIL"

    unconfirmed = served.run("users", "delete", "u-1001")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    deleted = served.run("users", "delete", "u-1001", "--yes", check=True).stdout
    assert "user u-1001 erased" in deleted and "  messages          1" in deleted and "profile           1" in deleted
    again = served.run("users", "delete", "u-1001", "--yes", "--json", check=True).stdout
    assert json.loads(again) == {
        "profile": 0, "audienceIndexes": 0, "openidIndex": 0, "messageIndex": 0, "messages": 0, "answers": 0,
        "dueIndex": 0, "messageLinks": 0,
    }  # fmt: skip
    gone = served.run("users", "export", "u-1001")
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    assert served.run("users", "get", "u-1001").returncode == 1
    assert served.run("status", message_id).returncode == 1
