"""Install the real libp2p peers the interop tests run (cached in .cache/interop, never committed).

* go-libp2p: the daemon p2pd, shipped inside the PyPI wheel hivemind==1.1.12,
  with its generated protobuf module for the control protocol. The wheel and
  both files are checked against pinned sha256 digests.
* js-libp2p 3.x: `npm ci` in tests/interop/js (versions pinned in package-lock.json).

    python tests/interop/setup_peers.py      # idempotent; prints where things are
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "interop"
GO_DIR = CACHE / "go"
JS_DIR = ROOT / "tests" / "interop" / "js"

WHEEL = "hivemind==1.1.12"
WHEEL_SHA256 = "acb8f0cf2cdb085259feb1c0a092c530f1953287cbfa4a1ab5e14e8c65359a2c"
FILES = {  # path inside the wheel -> (name in GO_DIR, sha256)
    "hivemind/hivemind_cli/p2pd": ("p2pd", "42f8f48e62583b97cdba3c31439c08029fb2b9fc506b5bdd82c46b7cc1d279d8"),
    "hivemind/proto/p2pd_pb2.py": ("p2pd_pb2.py", "3ab795f6c1a2be3966f2127349f289bb0e603308924a6f76671e68dc636efbd2"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def go_ready() -> bool:
    return all((GO_DIR / name).exists() and sha256(GO_DIR / name) == digest for name, digest in FILES.values())


def install_go() -> None:
    if go_ready():
        return
    GO_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--disable-pip-version-check",
                WHEEL,
                "-d",
                tmp,
            ],
            check=True,
        )
        [wheel] = Path(tmp).glob("hivemind-*.whl")
        if sha256(wheel) != WHEEL_SHA256:
            raise SystemExit(f"{wheel.name}: sha256 {sha256(wheel)} is not the pinned {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            for inner, (name, digest) in FILES.items():
                target = GO_DIR / name
                with zf.open(inner) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha256(target) != digest:
                    target.unlink()
                    raise SystemExit(f"{inner}: sha256 mismatch")
    (GO_DIR / "p2pd").chmod(0o755)


def install_js() -> None:
    lock = JS_DIR / "package-lock.json"
    stamp = JS_DIR / "node_modules" / ".lock-sha256"
    if stamp.exists() and stamp.read_text() == sha256(lock):
        return
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed for the js-libp2p peer (Node.js >= 20)")
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS_DIR, check=True)
    stamp.write_text(sha256(lock))


def main() -> None:
    install_go()
    install_js()
    print(f"go-libp2p peer: {GO_DIR / 'p2pd'} ({WHEEL})")
    print(f"js-libp2p peer: {JS_DIR / 'peer.mjs'}")


if __name__ == "__main__":
    main()
