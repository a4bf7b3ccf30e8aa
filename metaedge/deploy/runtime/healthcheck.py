"""``python -m metaedge.deploy.runtime.healthcheck``: exit 0 when the local server answers /healthz.

Used by the bundles' Docker HEALTHCHECK (slim images have no curl). The server answers 503 until
the model is loaded and warmed up, and again while it drains after SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

__all__ = ["main"]


def main() -> int:
    port = os.environ.get("METAEDGE_PORT", "8080")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 while loading/warming up or draining
        try:
            state = json.loads(exc.read()).get("status", "?")
        except (ValueError, AttributeError):
            state = "?"
        print(f"unhealthy: /healthz answered {exc.code} ({state})", file=sys.stderr)
        return 1
    except Exception as exc:  # any failure means unhealthy
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
