"""bim_ledger_post, leaner: the same posting in one round trip with fewer statements inside.

Differences from 0004, each measured on the settlement path (bench/ledger.py):
- one statement locks the user and node accounts and reads their balances (the rows say
  which accounts are append-only: those are neither locked nor returned, and their legs
  become PendingDelta rows); the overdraft check and the new balances are computed from
  them in PL/pgSQL instead of re-reading the rows;
- a leg may carry a cap (`p_caps`): the most its credit account may hold, read under the
  lock; the leg shrinks to fit and is dropped when nothing fits. A settlement's escrow
  legs use it, so `job_settle` no longer sends a lock statement of its own first;
- "a hold ends once" probes the (job, kind) index once per capture or release leg;
- it returns one row (status, transfer ids in leg order, the amounts after caps, the
  transaction time, and the overdrawn account if any) instead of the transfers' fields:
  the caller already has them. On "existing" the caller reads the first transfers itself.
Nothing is written before every check has passed, so a refusal leaves the caller's
transaction usable."""

import importlib

from django.db import migrations

FUNCTION = r"""
CREATE FUNCTION bim_ledger_post(
    p_keys text[], p_debits bigint[], p_credits bigint[], p_amounts bigint[], p_kinds text[],
    p_jobs uuid[], p_reasons text[], p_reverses bigint[], p_caps bigint[],
    OUT status text, OUT transfer_ids bigint[], OUT amounts bigint[], OUT posted_at timestamptz,
    OUT short_account bigint, OUT short_balance bigint, OUT short_needed bigint
) LANGUAGE plpgsql
-- Every statement below probes indexes by key, so the generic plan is the right one;
-- left to choose, PostgreSQL re-planned the array statements on every call.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_ids bigint[];              -- the locked accounts, in primary-key order
    v_before bigint[];           -- their balances, read under the lock
    v_after bigint[];
    v_pending_ids bigint[] := '{}';  -- append-only accounts: net change, written as PendingDelta
    v_pending bigint[] := '{}';
    v_legs int := cardinality(p_keys);
    j int;
BEGIN
    SELECT coalesce(array_agg(a.id ORDER BY a.id), '{}'), coalesce(array_agg(a.balance ORDER BY a.id), '{}')
      INTO v_ids, v_before
      FROM (SELECT id, balance FROM ledger_account
             WHERE id = ANY(p_debits || p_credits) AND NOT append_only
             ORDER BY id FOR UPDATE) a;
    FOR i IN 1 .. v_legs LOOP
        -- Checked after the locks: a concurrent twin with these keys has committed by now.
        -- One equality probe per key: the unique index is its plan whatever the statistics
        -- say (`= ANY(array)` was planned as a sequential scan of a table that had grown
        -- since it was last analyzed).
        IF EXISTS (SELECT 1 FROM ledger_transfer t WHERE t.idempotency_key = p_keys[i]) THEN
            status := 'existing';
            RETURN;
        END IF;
    END LOOP;
    FOR i IN 1 .. v_legs LOOP
        -- A job's hold ends once: captured on settle or released on failure, never both.
        IF p_kinds[i] IN ('capture', 'release') AND p_jobs[i] IS NOT NULL AND EXISTS (
                SELECT 1 FROM ledger_transfer t
                 WHERE t.job_id = p_jobs[i]
                   AND t.kind = CASE p_kinds[i] WHEN 'capture' THEN 'release' ELSE 'capture' END) THEN
            status := 'hold_ended';
            RETURN;
        END IF;
    END LOOP;
    v_after := v_before;
    amounts := p_amounts;
    FOR i IN 1 .. v_legs LOOP
        IF p_caps[i] IS NOT NULL THEN
            j := array_position(v_ids, p_credits[i]);
            IF j IS NULL THEN
                RAISE EXCEPTION 'a capped leg credits a locked account, not %', p_credits[i];
            END IF;
            amounts[i] := greatest(0, least(p_amounts[i], p_caps[i] - v_before[j]));
            CONTINUE WHEN amounts[i] = 0;
        END IF;
        j := array_position(v_ids, p_debits[i]);
        IF j IS NOT NULL THEN
            v_after[j] := v_after[j] - amounts[i];
        ELSE
            j := array_position(v_pending_ids, p_debits[i]);
            IF j IS NULL THEN
                v_pending_ids := v_pending_ids || p_debits[i];
                v_pending := v_pending || -amounts[i];
            ELSE
                v_pending[j] := v_pending[j] - amounts[i];
            END IF;
        END IF;
        j := array_position(v_ids, p_credits[i]);
        IF j IS NOT NULL THEN
            v_after[j] := v_after[j] + amounts[i];
        ELSE
            j := array_position(v_pending_ids, p_credits[i]);
            IF j IS NULL THEN
                v_pending_ids := v_pending_ids || p_credits[i];
                v_pending := v_pending || amounts[i];
            ELSE
                v_pending[j] := v_pending[j] + amounts[i];
            END IF;
        END IF;
    END LOOP;
    FOR j IN 1 .. cardinality(v_ids) LOOP
        IF v_after[j] < 0 THEN
            status := 'insufficient';
            short_account := v_ids[j];
            short_balance := v_before[j];
            short_needed := v_before[j] - v_after[j];
            RETURN;
        END IF;
    END LOOP;
    -- By primary key, like the lock: joined to unnest() instead, the generic plan hashed a
    -- sequential scan of every account.
    UPDATE ledger_account a SET balance = v_after[array_position(v_ids, a.id)]
     WHERE a.id = ANY(v_ids) AND a.balance <> v_after[array_position(v_ids, a.id)];
    IF cardinality(v_pending_ids) > 0 THEN
        INSERT INTO ledger_pendingdelta (account_id, amount)
        SELECT u.id, u.delta FROM unnest(v_pending_ids, v_pending) AS u(id, delta) WHERE u.delta <> 0;
    END IF;
    posted_at := now();
    -- Identity values are drawn in insertion order, so sorted ids follow the legs' order.
    WITH inserted AS (
        INSERT INTO ledger_transfer (idempotency_key, debit_id, credit_id, amount, kind, job_id, reason, reverses_id, created_at)
        SELECT u.k, u.d, u.c, u.a, u.kd, u.j, u.r, u.rv, posted_at
          FROM unnest(p_keys, p_debits, p_credits, amounts, p_kinds, p_jobs, p_reasons, p_reverses)
               WITH ORDINALITY AS u(k, d, c, a, kd, j, r, rv, n)
         WHERE u.a > 0
         ORDER BY u.n
        RETURNING id)
    SELECT array_agg(id ORDER BY id) INTO transfer_ids FROM inserted;
    status := 'created';
END;
$$;
"""

SIGNATURE = "bim_ledger_post(text[], bigint[], bigint[], bigint[], text[], uuid[], text[], bigint[], bigint[])"
PREVIOUS_SIGNATURE = "bim_ledger_post(text[], bigint[], bigint[], bigint[], text[], text[], text[], bigint[], bigint[])"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {PREVIOUS_SIGNATURE}", params=None)
        schema_editor.execute(FUNCTION, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}", params=None)
        previous = importlib.import_module("ledger.migrations.0004_post_in_database")
        schema_editor.execute(previous.FUNCTION, params=None)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0005_adjustment_proxy")]

    operations = [migrations.RunPython(create, drop)]
