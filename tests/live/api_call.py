"""One API call through the gateway, from a process of its own (used by the token test).

Usage: python -m tests.live.api_call ACCOUNT_ID START_AT  (waits until START_AT, epoch seconds)
"""

from __future__ import annotations

import sys
import time

from accounts.services import api_client
from wechat_service.app import create_app
from wechat_service.extensions import db


def main() -> int:
    account_id, start_at = int(sys.argv[1]), float(sys.argv[2])
    app = create_app()
    with app.app_context():
        client = api_client(account_id)
        time.sleep(max(0.0, start_at - time.time()))
        tags = client.tag.get()
        db.session.remove()
    print(f"ok {len(tags)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
