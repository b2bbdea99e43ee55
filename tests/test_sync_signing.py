"""Signed publication: a client that verifies signatures (verify-signature = true) accepts it."""

import re
import shutil
import subprocess
import tarfile

import pytest
from conftest import DroneSwarm, HandDrone

pytestmark = pytest.mark.slow  # real emerge, sshd or GnuPG: seconds a test

pytest.importorskip("portage")
if not shutil.which("gpg"):
    pytest.skip("signing tests need GnuPG (Debian package gnupg)", allow_module_level=True)


def gpg(home, *args, input=None):
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
                          input=input, capture_output=True, check=True)


@pytest.fixture
def signing_key(tmp_path):
    """A fresh signing key in its own GnuPG home: (home, fingerprint, public key)."""
    home = tmp_path / "signer-gnupg"
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", "swarm test <swarm@example.invalid>",
        "ed25519", "sign", "never")
    listing = gpg(home, "--with-colons", "--list-secret-keys").stdout.decode()
    fingerprint = re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.MULTILINE).group(1)
    return home, fingerprint, gpg(home, "--armor", "--export", fingerprint).stdout


def client_prefix(root, url, public_key=None, fingerprint=None):
    """A client that takes the binhost as a named binrepo with verify-signature = true."""
    from swarmtools.prefix import create_prefix

    client = create_prefix(root)
    # Not etc/portage/gnupg (Portage's default, set below anyway): gpg-agent's
    # sockets go in the home, and a unix socket's name holds 107 bytes;
    # under pytest-100 and later that path was longer (gpg exit 2).
    home = client.root / "gpg"
    home.mkdir(mode=0o700)
    if public_key:
        gpg(home, "--import", input=public_key)
        gpg(home, "--import-ownertrust", input=f"{fingerprint}:6:\n".encode())
        gpg(home, "--check-trustdb")  # Portage verifies with --no-auto-check-trustdb
    make_conf = client.root / "etc" / "portage" / "make.conf"
    # As root, Portage runs gpg --verify as 'nobody', who cannot enter pytest's
    # private temp tree (mode 0700); on a real client getuto sets up a keyring
    # 'nobody' can read. The verification itself is the same.
    make_conf.write_text(make_conf.read_text() + f'BINPKG_GPG_VERIFY_GPG_HOME="{home}"\n'
                         'GPG_VERIFY_USER_DROP=""\nGPG_VERIFY_GROUP_DROP=""\n')
    (client.root / "etc" / "portage" / "binrepos.conf").write_text(
        f"[swarm]\nsync-uri = {url}\npriority = 10\nverify-signature = true\n")
    return client


def test_signed_packages_install_on_a_verifying_client(tmp_path, built_packages, signing_key):
    home, fingerprint, public_key = signing_key
    swarm = DroneSwarm(tmp_path, drones=("d1",))
    swarm.scan()
    cpvs = HandDrone(swarm, built_packages).build_all()
    env = {**swarm.env, "SWARM_BINHOST_GPG_KEY": fingerprint, "SWARM_BINHOST_GPG_HOME": str(home)}
    r = swarm.run("swarm-sync", "-q", env=env)
    assert r.returncode == 0, r.stderr
    binhost = swarm.root / "binhost"
    files = list(binhost.rglob("*.gpkg.tar"))
    assert len(files) == len(cpvs)
    for path in files:
        with tarfile.open(path) as container:
            assert any(name.endswith(".sig") for name in container.getnames()), path
    snippet = swarm.run("swarm-config", "binrepos", env=env).stdout
    assert "verify-signature = true" in snippet and fingerprint in snippet

    server = subprocess.Popen(["python3", "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(binhost)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = "http://127.0.0.1:" + re.search(r"port (\d+)", server.stdout.readline()).group(1)
        trusting = client_prefix(tmp_path / "client", url, public_key, fingerprint)
        r = trusting.run(["emerge", "--getbinpkgonly", "--color=n", "@world"])
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "Emerging binary" in r.stdout
        # Without the key, the same client refuses the same packages.
        stranger = client_prefix(tmp_path / "stranger", url)
        r = stranger.run(["emerge", "--getbinpkgonly", "--color=n", "@world"])
        assert r.returncode != 0
        assert not list((stranger.root / "var" / "db" / "pkg").glob("*/*"))
    finally:
        server.kill()
        server.wait()


def test_unsigned_binhost_says_so_in_its_binrepos_snippet(swarm):
    r = swarm.run("swarm-config", "binrepos")
    assert r.returncode == 0 and "verify-signature = false" in r.stdout
    assert "sync-uri = http://127.0.0.1:8080" in r.stdout
