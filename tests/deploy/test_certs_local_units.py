"""Fast checks of the deploy helpers (no Flower processes): certificates, keys, run config, CLI."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from typer.testing import CliRunner

from fedstrat.deploy.certs import (
    CertificateSet,
    certificate_hosts,
    generate_certificates,
    generate_supernode_keys,
)
from fedstrat.deploy.local import (
    MARKER_ENV,
    LocalFederation,
    find_marked_processes,
    format_run_config,
    free_port,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.deploy


def test_certificates_chain_and_subject_alt_names(tmp_path: Path) -> None:
    certs = generate_certificates(tmp_path, hosts=["10.0.0.5", "link.example"], num_supernodes=2)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    # The server certificate is signed by the CA (raises InvalidSignature otherwise).
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)
    assert {"localhost", "link.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert set(certificate_hosts(certs.server_cert)) == {
        "localhost",
        "link.example",
        "127.0.0.1",
        "10.0.0.5",
    }
    key = load_pem_private_key(certs.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()
    assert certs.server_key.stat().st_mode & 0o077 == 0  # private keys: owner only
    assert certs.ca_key.stat().st_mode & 0o077 == 0


def test_supernode_keys_are_openssh_p384_pairs(tmp_path: Path) -> None:
    privs, pubs = generate_supernode_keys(tmp_path, 3)
    assert [p.name for p in privs] == ["supernode-0", "supernode-1", "supernode-2"]
    seen = set()
    for priv_path, pub_path in zip(privs, pubs, strict=True):
        priv = load_ssh_private_key(priv_path.read_bytes(), None)
        pub = load_ssh_public_key(pub_path.read_bytes())
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
        assert isinstance(priv.curve, ec.SECP384R1)
        assert priv.public_key().public_numbers() == pub.public_numbers()
        seen.add(pub_path.read_text().split()[1])
        assert priv_path.stat().st_mode & 0o077 == 0
    assert len(seen) == 3  # distinct keys
    # Existing pairs are kept (a SuperNode's identity must not change behind its back).
    before = privs[0].read_bytes()
    generate_supernode_keys(tmp_path, 4)
    assert privs[0].read_bytes() == before
    assert (tmp_path / "supernode-3.pub").is_file()


def test_existing_ca_is_not_overwritten_silently(tmp_path: Path) -> None:
    generate_certificates(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_certificates(tmp_path)
    again = generate_certificates(tmp_path, overwrite=True, num_supernodes=1)
    found = CertificateSet.from_directory(tmp_path)
    assert found.ca_cert == again.ca_cert
    assert [p.name for p in found.supernode_private_keys] == ["supernode-0"]
    with pytest.raises(FileNotFoundError):
        CertificateSet.from_directory(tmp_path / "nothing")
    with pytest.raises(ValueError):
        generate_certificates(tmp_path / "x", days=0)


def test_format_run_config_round_trips_through_toml() -> None:
    values = {"dataset": 'di"gits', "num_clients": 3, "lr": 0.2, "resume": "", "flag": True}
    parsed = tomllib.loads(format_run_config(values))
    assert parsed == {"dataset": 'di"gits', "num-clients": 3, "lr": 0.2, "resume": "", "flag": True}
    with pytest.raises(ValueError, match="finite"):
        format_run_config({"lr": float("nan")})
    with pytest.raises(ValueError, match="bool, int, float or str"):
        format_run_config({"lr": [1, 2]})
    with pytest.raises(ValueError, match="invalid TOML key"):
        format_run_config({"a.b": 1})


def test_local_federation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_supernodes"):
        LocalFederation(0)
    with pytest.raises(ValueError, match="requires TLS"):
        LocalFederation(2, tls=False, auth=True)
    with pytest.raises(ValueError, match="startup_timeout"):
        LocalFederation(2, startup_timeout=0)


def test_free_port_is_bindable_on_loopback() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_marked_processes_are_found_and_only_those(tmp_path: Path) -> None:
    marker = "test-" + os.urandom(4).hex()
    env = dict(os.environ, **{MARKER_ENV: marker})
    code = "import time; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while proc.pid not in find_marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = find_marked_processes(marker)
        assert proc.pid in found and other.pid not in found
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()
    assert find_marked_processes(marker) == []


def test_cli_certs_command(tmp_path: Path) -> None:
    from fedstrat.cli.deploy import app_dir, deploy_app

    runner = CliRunner()
    res = runner.invoke(
        deploy_app, ["certs", str(tmp_path / "c"), "-n", "2", "--host", "192.168.1.7"]
    )
    assert res.exit_code == 0, res.output
    assert "192.168.1.7" in res.output
    assert (tmp_path / "c" / "supernode-keys" / "supernode-1.pub").is_file()
    res = runner.invoke(deploy_app, ["certs", str(tmp_path / "c")])
    assert res.exit_code == 2 and "overwrite" in res.output
    res = runner.invoke(deploy_app, ["app-dir"])
    assert res.exit_code == 0 and Path(res.output.strip()) == app_dir()
    pyproject = tomllib.loads((app_dir() / "pyproject.toml").read_text())
    components = pyproject["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "fedstrat.app.server_app:app",
        "clientapp": "fedstrat.clients.client_app:app",
    }


def test_cli_local_rejects_bad_input_before_starting_anything(tmp_path: Path) -> None:
    from fedstrat.cli.deploy import deploy_app

    runner = CliRunner()
    res = runner.invoke(deploy_app, ["local", "-n", "2", "--insecure"])
    assert res.exit_code == 2 and "TLS" in res.output
    res = runner.invoke(deploy_app, ["local", "-n", "0"])
    assert res.exit_code == 2
    res = runner.invoke(deploy_app, ["local", "-n", "2", "--dataset", "nope"])
    assert res.exit_code == 2 and "dataset" in res.output
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("x")
    res = runner.invoke(deploy_app, ["local", "-n", "2", "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
    res = runner.invoke(deploy_app, ["local", "-n", "2", "--clients-per-round", "3"])
    assert res.exit_code == 2 and "exceeds num-clients (2)" in res.output


def test_cli_local_marks_the_run_stopping_before_it_stops_any_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C / SIGTERM during ``fedstrat deploy local``: rundir.STOP_FILE is in the run
    directory before the federation stops a process (the ServerApp then records no round
    that the shutdown cut short), and a new run of that directory starts without it."""
    import fedstrat.deploy.local as local
    from fedstrat.app.checkpoint import save_checkpoint
    from fedstrat.app.config import RunConfig
    from fedstrat.app.rundir import STOP_FILE
    from fedstrat.cli.common import EXIT_INTERRUPTED
    from fedstrat.cli.deploy import deploy_app

    out = tmp_path / "run"
    seen: dict[str, bool] = {}

    class Interrupted:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> Interrupted:
            seen["stale_at_start"] = (out / STOP_FILE).exists()
            return self

        def __exit__(self, *exc: object) -> None:  # where the real one stops its processes
            seen["marked_at_stop"] = (out / STOP_FILE).exists()

        def run(self, *args: object, **kwargs: object) -> None:
            out.mkdir(exist_ok=True)  # the ServerApp made the run directory
            raise KeyboardInterrupt

    monkeypatch.setattr(local, "LocalFederation", Interrupted)
    args = ["local", "-n", "2", "--dataset", "digits", "--rounds", "2", "--out", str(out)]
    res = CliRunner().invoke(deploy_app, args)
    assert res.exit_code == EXIT_INTERRUPTED, res.output
    assert seen == {"stale_at_start": False, "marked_at_stop": True}
    # resuming it (a checkpoint of round 1 with the run's options): the mark is gone first
    save_checkpoint(out, round=1, arrays={}, strategy_state={}, metrics=[], elapsed=0.0,
                    config=RunConfig(dataset="digits", rounds=2, num_clients=2, clients_per_round=2,
                                     out=str(out)).to_dict())
    seen.clear()
    res = CliRunner().invoke(deploy_app, ["local", "--resume", str(out)])
    assert res.exit_code == EXIT_INTERRUPTED, res.output
    assert seen == {"stale_at_start": False, "marked_at_stop": True}


def test_deploy_is_registered_in_the_main_cli() -> None:
    from fedstrat.cli.main import app

    res = CliRunner().invoke(app, ["deploy", "--help"])
    assert res.exit_code == 0, res.output
    assert "local" in res.output and "certs" in res.output


def _flower_flags() -> dict[str, set[str]]:
    """Option strings of flower-superlink / flower-supernode (Flower's own argparse parsers)."""
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    return {
        "flower-superlink": set(_parse_args_run_superlink()._option_string_actions),
        "flower-supernode": set(_parse_args_run_supernode()._option_string_actions),
    }


def test_docs_commands_use_real_flags() -> None:
    """Every ``--flag`` of flower-superlink/supernode used in docs/deploy.md exists in Flower."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
    text = docs.read_text()
    flags = _flower_flags()
    assert "--enable-supernode-auth" in flags["flower-superlink"]
    checked = 0
    for block in text.split("```")[1::2]:
        for line in textwrap.dedent(block).replace("\\\n", " ").splitlines():
            words = line.split()
            if not words or words[0] not in flags:
                continue
            for w in words[1:]:
                if w.startswith("--"):
                    flag = w.split("=")[0]
                    assert flag in flags[words[0]], f"{words[0]} has no {flag}"
                    checked += 1
    assert checked >= 10
