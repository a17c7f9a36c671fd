"""Vendor mermaid's browser bundle into the docs site, so its diagrams render without internet.

mkdocs-material draws ```mermaid fences with the global `mermaid` object when a page already has
one, and only otherwise fetches `https://unpkg.com/mermaid@11/dist/mermaid.min.js` at view time
(material 9.8, `components/content/mermaid`): offline, that fetch fails and the diagrams stay raw
text. This file fetches one pinned mermaid release from the npm registry at build time (`npm pack`,
the tarball checked against its pinned sha512 integrity), caches its self-contained browser bundle
(`dist/mermaid.min.js`: an IIFE that sets `globalThis.mermaid`, 3.6 MB, no further imports) in
the git-ignored `.cache/mermaid/<version>/`, and, as an mkdocs hook (`hooks:` in mkdocs.yml),
copies it into the site as `assets/javascripts/mermaid.min.js` with mermaid's MIT licence beside
it, and loads it on the pages that have a diagram (only those: it is 3.6 MB).

    python scripts/vendor_mermaid.py     # fetch into the cache (once) and print the path
    mkdocs build                         # the hook does the same, then ships it into the site

Without npm, or with the registry unreachable, both stop with the reason rather than build a
site whose diagrams need the CDN. To move to another release: set VERSION, INTEGRITY to
`npm view mermaid@<version> dist.integrity`, and SHA256 to the figure the mismatch error prints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# 11.x is the major material 9.8 itself loads from unpkg (`mermaid@11`), so its theme CSS fits.
VERSION = "11.17.2"
# the npm tarball's integrity, as `npm view mermaid@11.17.2 dist.integrity` prints it
INTEGRITY = "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg=="  # noqa: E501
# package/dist/mermaid.min.js inside that tarball: re-checked on every build, so a damaged or
# altered cache is fetched again rather than shipped
SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"

CACHE = ROOT / ".cache" / "mermaid" / VERSION
BUNDLE = "mermaid.min.js"
LICENSE = "LICENSE"
SITE_SCRIPT = "assets/javascripts/mermaid.min.js"
SITE_LICENSE = "assets/javascripts/mermaid.LICENSE.txt"
NPM_TIMEOUT_S = 300


class VendorError(RuntimeError):
    """The pinned mermaid bundle could not be fetched or did not match its pinned hash."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(cache: Path = CACHE) -> Path | None:
    """The cached bundle when it is there and matches SHA256, else None."""
    bundle = cache / BUNDLE
    if bundle.is_file() and (cache / LICENSE).is_file() and _sha256(bundle) == SHA256:
        return bundle
    return None


def _npm_pack(npm: str, dest: Path, cache: Path) -> Path:
    """`npm pack mermaid@VERSION` into dest: the registry tarball, nothing installed or run."""
    cmd = [npm, "pack", f"mermaid@{VERSION}", "--json", "--ignore-scripts"]
    cmd += ["--pack-destination", str(dest), "--loglevel", "error"]
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"}
    try:
        proc = subprocess.run(  # noqa: S603  # nosec B603 # fixed argv, no shell
            cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise VendorError(
            f"`npm pack mermaid@{VERSION}` took over {NPM_TIMEOUT_S} s: is the npm registry "
            "reachable from here?"
        ) from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:] or "(npm printed nothing)"
        raise VendorError(
            f"`npm pack mermaid@{VERSION}` failed (exit {proc.returncode}); the docs need the "
            f"npm registry once to vendor mermaid (then it is cached in {cache}):\n{tail}"
        )
    try:
        filename = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as e:
        raise VendorError(f"`npm pack` printed no tarball name: {proc.stdout[:500]!r}") from e
    tarball = dest / Path(filename).name
    if not tarball.is_file():
        raise VendorError(f"`npm pack` reported {filename} but wrote no such file in {dest}")
    return tarball


def _check_integrity(tarball: Path) -> None:
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != INTEGRITY:
        raise VendorError(
            f"mermaid@{VERSION} tarball integrity is sha512-{digest}, pinned {INTEGRITY}: "
            "refusing to ship it"
        )


def _extract(tarball: Path, member: str, out: Path) -> None:
    """Copy one named member out of the tarball (no paths from the archive are written)."""
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            source = tar.extractfile(member)
        except KeyError as e:
            raise VendorError(f"{tarball.name} has no {member}") from e
        if source is None:
            raise VendorError(f"{tarball.name}: {member} is not a regular file")
        with source, out.open("wb") as sink:
            shutil.copyfileobj(source, sink)


def vendor(cache: Path = CACHE, npm: str | None = None) -> Path:
    """The pinned mermaid browser bundle, fetched with npm into the cache when it is not there.

    Raises VendorError with the reason (npm missing, registry unreachable, hash mismatch).
    Concurrent callers are safe: each writes into its own temp dir and renames into place.
    """
    found = cached(cache)
    if found:
        return found
    npm = npm or shutil.which("npm")
    if not npm:
        raise VendorError(
            f"npm not found: the docs vendor mermaid {VERSION} from the npm registry so their "
            "diagrams render offline. Install Node.js/npm (Debian: `apt-get install npm`) and "
            "rerun `make docs`."
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        work = Path(tmp)
        tarball = _npm_pack(npm, work, cache)
        _check_integrity(tarball)
        bundle, license_ = work / BUNDLE, work / LICENSE
        _extract(tarball, f"package/dist/{BUNDLE}", bundle)
        _extract(tarball, f"package/{LICENSE}", license_)
        got = _sha256(bundle)
        if got != SHA256:
            raise VendorError(
                f"package/dist/{BUNDLE} of mermaid@{VERSION} has sha256 {got}, pinned {SHA256}"
            )
        os.replace(license_, cache / LICENSE)
        os.replace(bundle, cache / BUNDLE)
    return cache / BUNDLE


# ---------------------------------------------------------------- the mkdocs hook (mkdocs.yml)


def on_files(files: Any, config: Any) -> Any:
    """Add the vendored bundle and its licence to the site (fetching them first when missing)."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    try:
        bundle = vendor()
    except VendorError as e:
        raise PluginError(str(e)) from e
    files.append(File.generated(config, SITE_SCRIPT, abs_src_path=str(bundle)))
    files.append(File.generated(config, SITE_LICENSE, abs_src_path=str(bundle.parent / LICENSE)))
    return files


def on_post_page(output: str, page: Any, config: Any) -> str:
    """Load the bundle on pages with a diagram, before material's DOMContentLoaded handler runs.

    Per page rather than through extra_javascript, because only pages with diagrams should pay
    for 3.6 MB of script. That is right while navigation.instant is off (it is): instant
    navigation swaps pages without running their scripts, and would then need extra_javascript.
    """
    if 'class="mermaid"' not in output:
        return output
    from mkdocs.utils import get_relative_url

    src = get_relative_url(SITE_SCRIPT, page.url)
    at = output.rfind("</body>")
    if at < 0:
        return output
    return f'{output[:at]}<script src="{src}"></script>\n{output[at:]}'


def main() -> int:
    """Fetch into the cache if needed and print the bundle's path (exit 1 with the reason)."""
    try:
        path = vendor()
    except VendorError as e:
        print(f"vendor_mermaid: {e}", file=sys.stderr)
        return 1
    print(f"mermaid {VERSION}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
