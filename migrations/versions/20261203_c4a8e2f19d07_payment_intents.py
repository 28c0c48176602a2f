"""payments: payment intents — orders pay through an intent; money rows and refunds point at it

Every order becomes an intent (its trade number, amount, payer, provider, the refunded amount and
prepay id, a state from the order's), payment_transactions and refunds move from order_id to
intent_id, and orders lose refunded_fen and prepay_id (the order reads refunded_fen from its
intent). Downgrade puts them back from the intents.

Revision ID: c4a8e2f19d07
Revises: b3e91c4d7a25
Create Date: 2026-12-03 18:20:00

"""
import sqlalchemy as sa
from alembic import op

revision = 'c4a8e2f19d07'
down_revision = 'b3e91c4d7a25'
branch_labels = None
depends_on = None

BIG = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
MONEY_TABLES = ('payment_transactions', 'refunds')


def _plus_30_minutes(column: str) -> str:
    if op.get_bind().dialect.name == 'sqlite':
        return f"datetime({column}, '+30 minutes')"
    return f"{column} + interval '30 minutes'"


def upgrade():
    op.create_table('payment_intents',
    sa.Column('id', BIG, nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('provider', sa.Enum('wechatpay_v3', 'wechatpay_v2', 'alipay', name='provider', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('out_trade_no', sa.String(length=32), nullable=False),
    sa.Column('amount_fen', sa.Integer(), nullable=False),
    sa.Column('refunded_fen', sa.Integer(), nullable=False),
    sa.Column('payer_id', BIG, nullable=True),
    sa.Column('purpose', sa.String(length=64), nullable=False),
    sa.Column('state', sa.Enum('pending', 'succeeded', 'closed', name='intentstate', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('provider_txn_id', sa.String(length=64), nullable=True),
    sa.Column('prepay_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('succeeded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('amount_fen > 0', name=op.f('ck_payment_intents_amount_positive')),
    sa.CheckConstraint('refunded_fen >= 0 AND refunded_fen <= amount_fen', name=op.f('ck_payment_intents_refund_within_amount')),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_payment_intents_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['payer_id'], ['subscribers.id'], name=op.f('fk_payment_intents_payer_id_subscribers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_intents')),
    sa.UniqueConstraint('out_trade_no', name=op.f('uq_payment_intents_out_trade_no'))
    )
    with op.batch_alter_table('payment_intents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_intents_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_intents_purpose'), ['purpose'], unique=False)
        batch_op.create_index('ix_payment_intents_state_created', ['state', 'created_at'], unique=False)

    # One intent per order. A closed order was never paid (one paid after closing is refunding or
    # refunded): every state past pending_payment and closed means the money was taken.
    op.execute(f"""
        INSERT INTO payment_intents (account_id, provider, out_trade_no, amount_fen, refunded_fen, payer_id,
            purpose, state, provider_txn_id, prepay_id, created_at, expires_at, succeeded_at, closed_at)
        SELECT o.account_id, o.provider, o.out_trade_no, o.amount_fen, o.refunded_fen, o.subscriber_id,
            'order:' || CAST(o.id AS VARCHAR(20)),
            CASE o.status WHEN 'pending_payment' THEN 'pending' WHEN 'closed' THEN 'closed' ELSE 'succeeded' END,
            (SELECT MIN(t.provider_txn_id) FROM payment_transactions t
              WHERE t.order_id = o.id AND t.kind = 'payment' AND t.anomaly IS NULL),
            o.prepay_id, o.created_at, {_plus_30_minutes('o.created_at')}, o.paid_at,
            CASE WHEN o.status = 'closed' THEN o.finished_at END
        FROM orders o ORDER BY o.id
    """)

    for table in MONEY_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('intent_id', BIG, nullable=True))
        op.execute(f"""
            UPDATE {table} SET intent_id = (
                SELECT i.id FROM payment_intents i JOIN orders o ON o.out_trade_no = i.out_trade_no
                WHERE o.id = {table}.order_id)
            WHERE order_id IS NOT NULL
        """)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f'ix_{table}_order_id'))
            batch_op.drop_constraint(batch_op.f(f'fk_{table}_order_id_orders'), type_='foreignkey')
            batch_op.drop_column('order_id')
            batch_op.create_index(batch_op.f(f'ix_{table}_intent_id'), ['intent_id'], unique=False)
            batch_op.create_foreign_key(
                batch_op.f(f'fk_{table}_intent_id_payment_intents'), 'payment_intents', ['intent_id'], ['id']
            )

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_orders_refund_within_amount'), type_='check')
        batch_op.drop_column('refunded_fen')
        batch_op.drop_column('prepay_id')


def downgrade():
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prepay_id', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('refunded_fen', sa.Integer(), nullable=False, server_default='0'))
    op.execute("""
        UPDATE orders SET
            refunded_fen = COALESCE((SELECT i.refunded_fen FROM payment_intents i
                                     WHERE i.out_trade_no = orders.out_trade_no), 0),
            prepay_id = (SELECT i.prepay_id FROM payment_intents i WHERE i.out_trade_no = orders.out_trade_no)
    """)
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_check_constraint('refund_within_amount', 'refunded_fen >= 0 AND refunded_fen <= amount_fen')

    for table in MONEY_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('order_id', BIG, nullable=True))
        op.execute(f"""
            UPDATE {table} SET order_id = (
                SELECT o.id FROM orders o JOIN payment_intents i ON o.out_trade_no = i.out_trade_no
                WHERE i.id = {table}.intent_id)
            WHERE intent_id IS NOT NULL
        """)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f'ix_{table}_intent_id'))
            batch_op.drop_constraint(batch_op.f(f'fk_{table}_intent_id_payment_intents'), type_='foreignkey')
            batch_op.drop_column('intent_id')
            batch_op.create_index(batch_op.f(f'ix_{table}_order_id'), ['order_id'], unique=False)
            batch_op.create_foreign_key(batch_op.f(f'fk_{table}_order_id_orders'), 'orders', ['order_id'], ['id'])

    with op.batch_alter_table('payment_intents', schema=None) as batch_op:
        batch_op.drop_index('ix_payment_intents_state_created')
        batch_op.drop_index(batch_op.f('ix_payment_intents_purpose'))
        batch_op.drop_index(batch_op.f('ix_payment_intents_account_id'))
    op.drop_table('payment_intents')
