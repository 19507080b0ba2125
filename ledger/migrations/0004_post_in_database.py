"""bim_ledger_post: one posting in one round trip on PostgreSQL (see ledger.services._post_in_database).

It locks the user and node accounts in primary-key order, returns the existing transfers
when the posting's keys were used before, reports an overdraft as a status row (no
exception, so the caller's transaction stays usable), and otherwise inserts the transfers,
updates the locked balances and appends PendingDelta rows for append-only accounts."""

from django.db import migrations

FUNCTION = r"""
CREATE OR REPLACE FUNCTION bim_ledger_post(
    p_keys text[], p_debits bigint[], p_credits bigint[], p_amounts bigint[], p_kinds text[],
    p_jobs text[], p_reasons text[], p_reverses bigint[], p_lock bigint[]
) RETURNS TABLE(status text, transfer_id bigint, key text, debit bigint, credit bigint, amount bigint, kind text, job text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_accounts bigint[];
    v_deltas bigint[];
    v_short record;
BEGIN
    PERFORM 1 FROM ledger_account a WHERE a.id = ANY(p_lock) ORDER BY a.id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM ledger_transfer t WHERE t.idempotency_key = ANY(p_keys)) THEN
        RETURN QUERY SELECT 'existing'::text, t.id, t.idempotency_key::text, t.debit_id, t.credit_id, t.amount,
                            t.kind::text, t.job_id::text
                     FROM ledger_transfer t WHERE t.idempotency_key = ANY(p_keys);
        RETURN;
    END IF;
    -- A job's hold ends once: captured on settle or released on failure, never both.
    IF ('capture' = ANY(p_kinds) OR 'release' = ANY(p_kinds)) AND EXISTS (
            SELECT 1 FROM unnest(p_kinds, p_jobs) AS l(kd, j)
              JOIN ledger_transfer t ON t.job_id = l.j::uuid
             WHERE (l.kd = 'capture' AND t.kind = 'release') OR (l.kd = 'release' AND t.kind = 'capture')) THEN
        RETURN QUERY SELECT 'hold_ended'::text, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT array_agg(m.account ORDER BY m.account), array_agg(m.delta ORDER BY m.account)
      INTO v_accounts, v_deltas
      FROM (SELECT l.account, sum(l.delta)::bigint AS delta
              FROM (SELECT d AS account, -a AS delta FROM unnest(p_debits, p_amounts) AS u(d, a)
                    UNION ALL
                    SELECT c, a FROM unnest(p_credits, p_amounts) AS u(c, a)) l
             GROUP BY l.account) m;
    SELECT a.id, a.balance, -c.delta AS needed INTO v_short
      FROM unnest(v_accounts, v_deltas) AS c(account, delta)
      JOIN ledger_account a ON a.id = c.account
     WHERE NOT a.append_only AND a.balance + c.delta < 0
     ORDER BY a.id LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 'insufficient'::text, NULL::bigint, NULL::text, v_short.id, NULL::bigint,
                            v_short.needed, NULL::text, v_short.balance::text;
        RETURN;
    END IF;
    UPDATE ledger_account a SET balance = a.balance + c.delta
      FROM unnest(v_accounts, v_deltas) AS c(account, delta)
     WHERE a.id = c.account AND NOT a.append_only AND c.delta <> 0;
    IF array_length(p_lock, 1) IS DISTINCT FROM array_length(v_accounts, 1) THEN
        -- Some account is append-only (not in the lock list): its legs become pending deltas.
        INSERT INTO ledger_pendingdelta (account_id, amount)
        SELECT c.account, c.delta FROM unnest(v_accounts, v_deltas) AS c(account, delta)
         WHERE c.account <> ALL(p_lock) AND c.delta <> 0;
    END IF;
    RETURN QUERY
    INSERT INTO ledger_transfer AS t (idempotency_key, debit_id, credit_id, amount, kind, job_id, reason, reverses_id, created_at)
    SELECT u.k, u.d, u.c, u.a, u.kd, u.j::uuid, u.r, u.rv, now()
      FROM unnest(p_keys, p_debits, p_credits, p_amounts, p_kinds, p_jobs, p_reasons, p_reverses)
           WITH ORDINALITY AS u(k, d, c, a, kd, j, r, rv, n)
     ORDER BY u.n
    RETURNING 'created'::text, t.id, t.idempotency_key::text, t.debit_id, t.credit_id, t.amount, t.kind::text, t.job_id::text;
END;
$$;
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "DROP FUNCTION IF EXISTS bim_ledger_post(text[], bigint[], bigint[], bigint[], text[], text[], text[], bigint[], bigint[])",
            params=None,
        )


class Migration(migrations.Migration):
    dependencies = [("ledger", "0003_withdrawals_slashes_pending")]

    operations = [migrations.RunPython(create, drop)]
