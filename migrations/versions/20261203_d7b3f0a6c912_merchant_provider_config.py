"""payments: each provider's credentials in its own sealed config, not in columns named for v3

merchants keeps mchid (the merchant number; Alipay's seller id) and appid; serial_no, private_key,
apiv3_key, platform_public_key, platform_public_key_id and sign_type become one JSON object per
provider, sealed whole with the master key (the secrets are opened and sealed again here, so the
migration needs WECHAT_SERVICE_MASTER_KEY, like the service). Downgrade puts the columns back.

Revision ID: d7b3f0a6c912
Revises: c4a8e2f19d07
Create Date: 2026-12-03 19:10:00

"""
import json

import sqlalchemy as sa
from alembic import op

from wechat_service.secrets import open_secret, seal_secret

revision = 'd7b3f0a6c912'
down_revision = 'c4a8e2f19d07'
branch_labels = None
depends_on = None

OLD = ('serial_no', 'private_key', 'apiv3_key', 'platform_public_key', 'platform_public_key_id', 'sign_type')
SEALED = ('private_key', 'apiv3_key')  # the other old columns were plain text


def _config(provider: str, row: dict) -> dict:
    """The old columns, read the way each provider used them (see the models before this revision)."""
    if provider == 'alipay':
        return {'app_private_key': row['private_key'], 'alipay_public_key': row['platform_public_key']}
    if provider == 'wechatpay_v2':
        return {'api_key': row['apiv3_key'], 'sign_type': row['sign_type'] or 'MD5',
                'cert_pem': row['platform_public_key'] or '', 'key_pem': row['private_key'] or ''}
    return {name: row[name] for name in OLD[:5]}


def _old(provider: str, config: dict) -> dict:
    if provider == 'alipay':
        return {'serial_no': '', 'private_key': config['app_private_key'], 'apiv3_key': '',
                'platform_public_key': config['alipay_public_key'], 'platform_public_key_id': 'alipay',
                'sign_type': None}
    if provider == 'wechatpay_v2':
        return {'serial_no': '', 'private_key': config.get('key_pem', ''), 'apiv3_key': config['api_key'],
                'platform_public_key': config.get('cert_pem', ''), 'platform_public_key_id': '',
                'sign_type': config.get('sign_type', 'MD5')}
    return {**{name: config[name] for name in OLD[:5]}, 'sign_type': None}


def upgrade():
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config', sa.Text(), nullable=True))
    conn = op.get_bind()
    merchants = sa.table('merchants', sa.column('id'), sa.column('provider'), sa.column('config'),
                         *(sa.column(name) for name in OLD))
    for row in conn.execute(sa.select(merchants)).mappings().all():
        opened = {name: (open_secret(row[name]) if name in SEALED and row[name] else row[name]) for name in OLD}
        sealed = seal_secret(json.dumps(_config(row['provider'], opened), sort_keys=True))
        conn.execute(sa.update(merchants).where(merchants.c.id == row['id']).values(config=sealed))
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.alter_column('config', existing_type=sa.Text(), nullable=False)
        for name in OLD:
            batch_op.drop_column(name)


def downgrade():
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('serial_no', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('private_key', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('apiv3_key', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('platform_public_key', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('platform_public_key_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('sign_type', sa.String(length=16), nullable=True))
    conn = op.get_bind()
    merchants = sa.table('merchants', sa.column('id'), sa.column('provider'), sa.column('config'),
                         *(sa.column(name) for name in OLD))
    for row in conn.execute(sa.select(merchants)).mappings().all():
        old = _old(row['provider'], json.loads(open_secret(row['config'])))
        conn.execute(sa.update(merchants).where(merchants.c.id == row['id']).values(
            **{name: (seal_secret(value) if name in SEALED else value) for name, value in old.items()}))
    with op.batch_alter_table('merchants', schema=None) as batch_op:
        for name in ('serial_no', 'private_key', 'apiv3_key', 'platform_public_key', 'platform_public_key_id'):
            batch_op.alter_column(name, existing_type=sa.Text() if 'key' in name and name != 'platform_public_key_id'
                                  else sa.String(length=64), nullable=False)
        batch_op.drop_column('config')
