-- Subscriptions: named consumers of the global log with server-side
-- checkpoints (tables in sql/schema.sql; the members' leases are in Rust,
-- src/sql/subscription/lease.rs). Every function runs as the extension's
-- owner and keeps to the caller's tenant.

-- Refuses on a hot standby: consuming writes checkpoints.
CREATE FUNCTION allsource._refuse_on_standby(function_name text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION '% cannot run on a hot standby', function_name
            USING ERRCODE = '25006',
                  DETAIL = 'This server replays the primary''s WAL and is read-only.',
                  HINT = 'Consume on the primary; allsource.subscriptions() works here.';
    END IF;
END
$$;

-- The caller's tenant's subscription of that name; 42704 if there is none.
CREATE FUNCTION allsource._subscription(name text) RETURNS allsource.subscriptions
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_subscription allsource.subscriptions;
    tenant text := allsource.current_tenant();
BEGIN
    IF _subscription.name IS NULL THEN
        RAISE EXCEPTION 'invalid argument "subscription": must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT s.* INTO found_subscription FROM allsource.subscriptions s
    WHERE s.name = _subscription.name AND s.tenant_id IS NOT DISTINCT FROM tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', _subscription.name
            USING ERRCODE = '42704',
                  HINT = 'allsource.subscriptions() lists the subscriptions; allsource.create_subscription() creates one.';
    END IF;
    RETURN found_subscription;
END
$$;

-- 22023 unless member is one of the subscription's; 55000 for a handler
-- subscription, which only the workers consume.
CREATE FUNCTION allsource._check_member(subscription allsource.subscriptions, member int) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF member IS NULL OR member < 0 OR member >= (subscription).members THEN
        RAISE EXCEPTION 'invalid argument "member": must be between 0 and % (subscription "%" has % members), not %',
                (subscription).members - 1, (subscription).name, (subscription).members, coalesce(member::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    IF (subscription).handler IS NOT NULL THEN
        RAISE EXCEPTION 'subscription "%" has a handler: the subscription workers consume it', (subscription).name
            USING ERRCODE = '55000',
                  HINT = 'Create a subscription without a handler to consume it with receive and ack.';
    END IF;
END
$$;

-- Whether the event is one the subscription's member delivers: its tenant,
-- categories (read_category's rule), types and member (the consumer-group hash).
CREATE FUNCTION allsource._delivers(subscription allsource.subscriptions, member int, event allsource.events) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (event).tenant_id IS NOT DISTINCT FROM (subscription).tenant_id
       AND ((subscription).categories IS NULL
            OR EXISTS (SELECT FROM pg_catalog.unnest((subscription).categories) AS c (category)
                       WHERE (event).stream_id = c.category OR pg_catalog.starts_with((event).stream_id, c.category || '-')))
       AND ((subscription).event_types IS NULL OR (event).event_type = ANY ((subscription).event_types))
       AND ((subscription).members = 1 OR allsource.partition_for((event).stream_id, (subscription).members) = member)
$$;

CREATE FUNCTION allsource.create_subscription(
    name text,
    categories text[] DEFAULT NULL,
    event_types text[] DEFAULT NULL,
    start_after bigint DEFAULT 0,
    members int DEFAULT 1,
    handler regprocedure DEFAULT NULL,
    max_attempts int DEFAULT 5
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant text := allsource.current_tenant();
    created bigint;
    creator text := allsource._calling_role();
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.create_subscription()');
    PERFORM allsource._check_subscription(create_subscription.name, create_subscription.categories,
        create_subscription.event_types, create_subscription.start_after, create_subscription.members,
        create_subscription.max_attempts);
    IF create_subscription.handler IS NOT NULL THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
                       WHERE p.oid = create_subscription.handler AND p.prokind = 'f' AND p.pronargs = 1 AND NOT p.proretset
                         AND p.proargtypes[0] IN ('allsource.events'::pg_catalog.regtype, 'allsource.events[]'::pg_catalog.regtype)) THEN
            RAISE EXCEPTION 'invalid argument "handler": % must be a function taking one allsource.events row, or an array of them', create_subscription.handler
                USING ERRCODE = '22023',
                      HINT = 'A handler taking allsource.events[] is called once per batch with its events in order.';
        END IF;
        IF NOT pg_catalog.has_function_privilege(creator, create_subscription.handler, 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied for function %', create_subscription.handler
                USING ERRCODE = '42501',
                      DETAIL = 'A handler runs as the role that created the subscription.';
        END IF;
    END IF;
    IF EXISTS (SELECT FROM allsource.subscriptions s
               WHERE s.name = create_subscription.name AND s.tenant_id IS NOT DISTINCT FROM tenant) THEN
        RAISE EXCEPTION 'subscription "%" already exists', create_subscription.name
            USING ERRCODE = '42710',
                  HINT = 'Drop it first (allsource.drop_subscription()), or choose another name.';
    END IF;
    INSERT INTO allsource.subscriptions AS s (name, tenant_id, categories, event_types, start_after,
                                              members, handler, max_attempts, created_by)
    VALUES (create_subscription.name, tenant, create_subscription.categories, create_subscription.event_types,
            create_subscription.start_after, create_subscription.members, create_subscription.handler,
            create_subscription.max_attempts, creator)
    RETURNING s.subscription_id INTO created;
    INSERT INTO allsource.subscription_members (subscription_id, member, checkpoint)
    SELECT created, m, create_subscription.start_after
    FROM pg_catalog.generate_series(0, create_subscription.members - 1) AS m;
END
$$;

CREATE FUNCTION allsource.drop_subscription(name text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped allsource.subscriptions;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.drop_subscription()');
    dropped := allsource._subscription(drop_subscription.name);
    DELETE FROM allsource.parked_events p WHERE p.subscription_id = dropped.subscription_id;
    DELETE FROM allsource.subscription_attempts a WHERE a.subscription_id = dropped.subscription_id;
    DELETE FROM allsource.subscription_members m WHERE m.subscription_id = dropped.subscription_id;
    DELETE FROM allsource.subscriptions s WHERE s.subscription_id = dropped.subscription_id;
END
$$;

-- The member's pending events, at most max_count: first those put back in
-- front (failed and not parked, or retried after parking) at or below its
-- checkpoint done, then the events after it up to the watermark upto,
-- parked ones left out. What receive returns and the workers handle.
CREATE FUNCTION allsource._pending(s allsource.subscriptions, member int, max_count int, done bigint, upto bigint)
RETURNS SETOF allsource.events
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- Planning for 32 partitions costs more than fetching 1,000 events; the plan
-- (the position index in order) is the same for any argument.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    returned bigint;
BEGIN
    RETURN QUERY
        SELECT e.* FROM allsource.subscription_attempts a
        JOIN allsource.events e ON e.position = a.position
        WHERE a.subscription_id = s.subscription_id AND a.member = _pending.member AND a.position <= done
        ORDER BY a.position LIMIT max_count;
    GET DIAGNOSTICS returned = ROW_COUNT;
    -- Two statements for the tenant, as in read_all: "IS NOT DISTINCT FROM"
    -- has no estimate, and the plan that misjudges it sorts the whole backlog.
    IF returned < max_count AND s.tenant_id IS NULL THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.position > done AND e.position <= upto AND e.tenant_id IS NULL
              -- _delivers, written out: a function with SET search_path is
              -- not inlined, and a call per row costs more than the scan.
              AND (s.categories IS NULL
                   OR EXISTS (SELECT FROM pg_catalog.unnest(s.categories) AS c (category)
                              WHERE e.stream_id = c.category OR pg_catalog.starts_with(e.stream_id, c.category || '-')))
              AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
              AND (s.members = 1 OR allsource.partition_for(e.stream_id, s.members) = _pending.member)
              AND NOT EXISTS (SELECT FROM allsource.parked_events p
                              WHERE p.subscription_id = s.subscription_id AND p.position = e.position)
            ORDER BY e.position LIMIT max_count - returned;
    ELSIF returned < max_count THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.position > done AND e.position <= upto AND e.tenant_id = s.tenant_id
              AND (s.categories IS NULL
                   OR EXISTS (SELECT FROM pg_catalog.unnest(s.categories) AS c (category)
                              WHERE e.stream_id = c.category OR pg_catalog.starts_with(e.stream_id, c.category || '-')))
              AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
              AND (s.members = 1 OR allsource.partition_for(e.stream_id, s.members) = _pending.member)
              AND NOT EXISTS (SELECT FROM allsource.parked_events p
                              WHERE p.subscription_id = s.subscription_id AND p.position = e.position)
            ORDER BY e.position LIMIT max_count - returned;
    END IF;
END
$$;

-- The member's next events (see _pending). The member's row is locked until
-- the caller's transaction ends: a session that took the lease over waits
-- for an ack still in flight, and reads the checkpoint it set.
CREATE FUNCTION allsource.receive(subscription text, max_count int DEFAULT 100, member int DEFAULT 0)
RETURNS SETOF allsource.events
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    done bigint;
    upto bigint;
    events allsource.events[];
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.receive()');
    s := allsource._subscription(receive.subscription);
    PERFORM allsource._check_member(s, receive.member);
    IF receive.max_count IS NULL OR receive.max_count < 0 THEN
        RAISE EXCEPTION 'invalid argument "max_count": must be 0 or more, not %', coalesce(receive.max_count::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    PERFORM allsource._hold_member(s.subscription_id, s.name, receive.member);
    upto := allsource._watermark_for_read('allsource.receive');
    SELECT m.checkpoint INTO done FROM allsource.subscription_members m
    WHERE m.subscription_id = s.subscription_id AND m.member = receive.member FOR UPDATE;
    events := ARRAY(SELECT p FROM allsource._pending(s, receive.member, receive.max_count, done, upto) p);
    PERFORM allsource._count_delivered(s.subscription_id, receive.member,
                                       ARRAY(SELECT e.position FROM pg_catalog.unnest(events) e));
    RETURN QUERY SELECT * FROM pg_catalog.unnest(events);
END
$$;

-- Every event of the member up to and including position is done: the
-- checkpoint moves there (never back), in the caller's transaction.
CREATE FUNCTION allsource.ack(subscription text, "position" bigint, member int DEFAULT 0) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    upto bigint;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.ack()');
    s := allsource._subscription(ack.subscription);
    PERFORM allsource._check_member(s, ack.member);
    PERFORM allsource._hold_member(s.subscription_id, s.name, ack.member);
    upto := allsource.watermark();
    IF ack.position IS NULL OR ack.position < 0 OR ack.position > upto THEN
        RAISE EXCEPTION 'invalid argument "position": must be between 0 and the watermark (%), not %', upto, coalesce(ack.position::text, 'null')
            USING ERRCODE = '22023',
                  HINT = 'Acknowledge the position of an event receive returned.';
    END IF;
    UPDATE allsource.subscription_members m
    SET checkpoint = GREATEST(m.checkpoint, ack.position), acked_at = pg_catalog.now()
    WHERE m.subscription_id = s.subscription_id AND m.member = ack.member;
    DELETE FROM allsource.subscription_attempts a
    WHERE a.subscription_id = s.subscription_id AND a.member = ack.member AND a.position <= ack.position;
    PERFORM allsource._count_acked(s.subscription_id, ack.member, ack.position);
END
$$;

-- One failed attempt at the event at position: 'retry' (it stays in front),
-- or 'parked' at max_attempts (kept in parked_events; the member goes on).
CREATE FUNCTION allsource.nack(subscription text, "position" bigint, reason text DEFAULT NULL, member int DEFAULT 0) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.nack()');
    s := allsource._subscription(nack.subscription);
    PERFORM allsource._check_member(s, nack.member);
    PERFORM allsource._hold_member(s.subscription_id, s.name, nack.member);
    RETURN allsource._record_failure(s, nack.member, nack.position, nack.reason);
END
$$;

-- nack's work, also the handler workers': counts the attempt, parks at max_attempts.
CREATE FUNCTION allsource._record_failure(s allsource.subscriptions, member int, "position" bigint, reason text) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done bigint;
    upto bigint := allsource.watermark();
    tries int;
BEGIN
    SELECT m.checkpoint INTO done FROM allsource.subscription_members m
    WHERE m.subscription_id = s.subscription_id AND m.member = _record_failure.member FOR UPDATE;
    IF _record_failure.position IS NULL
       OR NOT (EXISTS (SELECT FROM allsource.subscription_attempts a
                       WHERE a.subscription_id = s.subscription_id AND a.member = _record_failure.member
                         AND a.position = _record_failure.position)
               OR (_record_failure.position > done AND _record_failure.position <= upto
                   AND EXISTS (SELECT FROM allsource.events e
                               WHERE e.position = _record_failure.position
                                 AND allsource._delivers(s, _record_failure.member, e))
                   AND NOT EXISTS (SELECT FROM allsource.parked_events p
                                   WHERE p.subscription_id = s.subscription_id AND p.position = _record_failure.position))) THEN
        RAISE EXCEPTION 'invalid argument "position": % is not an event member % of subscription "%" has to process',
                coalesce(_record_failure.position::text, 'null'), _record_failure.member, s.name
            USING ERRCODE = '22023',
                  HINT = 'Report a failure of an event receive returned and that is not acknowledged.';
    END IF;
    INSERT INTO allsource.subscription_attempts AS a (subscription_id, position, member, attempts, last_reason, retry_after)
    VALUES (s.subscription_id, _record_failure.position, _record_failure.member, 1, _record_failure.reason, pg_catalog.now())
    ON CONFLICT ON CONSTRAINT subscription_attempts_pkey DO UPDATE
    SET attempts = a.attempts + 1, last_reason = excluded.last_reason,
        -- Backoff for the handler workers: 0.1 s, 0.2 s, 0.4 s … at most a minute.
        retry_after = pg_catalog.now() + LEAST(pg_catalog.power(2, a.attempts) * 0.1, 60) * interval '1 second'
    RETURNING a.attempts INTO tries;
    UPDATE allsource.subscription_members m SET last_error = _record_failure.reason
    WHERE m.subscription_id = s.subscription_id AND m.member = _record_failure.member;
    IF tries < s.max_attempts THEN
        RETURN 'retry';
    END IF;
    DELETE FROM allsource.subscription_attempts a
    WHERE a.subscription_id = s.subscription_id AND a.position = _record_failure.position;
    INSERT INTO allsource.parked_events (subscription_id, position, member, attempts, last_reason)
    VALUES (s.subscription_id, _record_failure.position, _record_failure.member, tries, _record_failure.reason);
    PERFORM allsource._count_parked(s.subscription_id, _record_failure.member, _record_failure.position);
    RETURN 'parked';
END
$$;

-- The subscription workers' work for one member, in the caller's (the
-- worker's) transaction: the pending events go to the handler, in order, as
-- the subscription's owner and for its tenant; their effects and the
-- checkpoint commit together. First all of them in one statement; if one
-- fails (or some have failed before), one by one in a subtransaction each: a
-- failure rolls back that event's effects only and counts an attempt, and the
-- member stops there until its backoff is over ('retry'), or goes on past it
-- ('parked'). Returns how many events were handled.
CREATE FUNCTION allsource._handle(subscription_id bigint, member int, max_count int) RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    done bigint;
    upto bigint;
    events allsource.events[];
    event allsource.events;
    seen int;
    handled int := 0;
    stopped boolean := false;
    passed bigint;
    retried bigint[] := '{}';
    failure text;
BEGIN
    SELECT x.* INTO s FROM allsource.subscriptions x WHERE x.subscription_id = _handle.subscription_id;
    IF NOT FOUND OR s.handler IS NULL THEN
        RETURN 0;
    END IF;
    SELECT m.checkpoint INTO done FROM allsource.subscription_members m
    WHERE m.subscription_id = s.subscription_id AND m.member = _handle.member FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    upto := allsource.watermark();
    PERFORM pg_catalog.set_config('allsource.tenant', coalesce(s.tenant_id, ''), true);
    events := ARRAY(SELECT p FROM allsource._pending(s, _handle.member, _handle.max_count, done, upto) p);
    seen := pg_catalog.cardinality(events);
    PERFORM allsource._count_delivered(s.subscription_id, _handle.member,
                                       ARRAY(SELECT e.position FROM pg_catalog.unnest(events) e));
    IF seen > 0 AND NOT EXISTS (SELECT FROM allsource.subscription_attempts a
                                WHERE a.subscription_id = s.subscription_id AND a.member = _handle.member) THEN
        BEGIN
            PERFORM allsource._call_handler(s.handler, s.created_by, events);
            handled := seen;
            passed := (events[seen]).position;
        EXCEPTION WHEN OTHERS THEN
            NULL; -- one of them failed: one by one below finds which
        END;
    END IF;
    IF handled = 0 THEN
        FOREACH event IN ARRAY events LOOP
            IF EXISTS (SELECT FROM allsource.subscription_attempts a
                       WHERE a.subscription_id = s.subscription_id AND a.position = event.position
                         AND a.retry_after > pg_catalog.clock_timestamp()) THEN
                stopped := true;
                EXIT;
            END IF;
            BEGIN
                PERFORM allsource._call_handler(s.handler, s.created_by, ARRAY[event]);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
                IF allsource._record_failure(s, _handle.member, event.position, failure) = 'retry' THEN
                    stopped := true;
                    EXIT;
                END IF;
                CONTINUE;
            END;
            handled := handled + 1;
            IF event.position <= done THEN
                retried := retried || event.position;
            ELSE
                passed := event.position;
            END IF;
        END LOOP;
        DELETE FROM allsource.subscription_attempts a
        WHERE a.subscription_id = s.subscription_id AND a.member = _handle.member
          AND (a.position = ANY (retried) OR a.position <= passed);
    END IF;
    -- Everything pending up to the watermark was handled: the checkpoint
    -- moves to the watermark, past the events this member does not deliver.
    IF NOT stopped AND seen < _handle.max_count THEN
        passed := upto;
    END IF;
    UPDATE allsource.subscription_members m
    SET checkpoint = GREATEST(m.checkpoint, coalesce(passed, m.checkpoint)),
        acked_at = CASE WHEN handled > 0 THEN pg_catalog.now() ELSE m.acked_at END
    WHERE m.subscription_id = s.subscription_id AND m.member = _handle.member
    RETURNING m.checkpoint INTO done;
    PERFORM allsource._count_acked(s.subscription_id, _handle.member, done);
    RETURN handled;
END
$$;

CREATE FUNCTION allsource.release(subscription text, member int DEFAULT 0) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
BEGIN
    s := allsource._subscription(release.subscription);
    PERFORM allsource._check_member(s, release.member);
    PERFORM allsource._release_member(s.subscription_id, release.member);
END
$$;

-- Puts parked events (all, or the one at position) back in front, with
-- max_attempts fresh attempts each; returns how many.
CREATE FUNCTION allsource.retry_parked(subscription text, "position" bigint DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    moved bigint;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.retry_parked()');
    s := allsource._subscription(retry_parked.subscription);
    WITH unparked AS (
        DELETE FROM allsource.parked_events p
        WHERE p.subscription_id = s.subscription_id
          AND (retry_parked.position IS NULL OR p.position = retry_parked.position)
        RETURNING p.position, p.member, p.last_reason
    )
    INSERT INTO allsource.subscription_attempts (subscription_id, position, member, attempts, last_reason, retry_after)
    SELECT s.subscription_id, u.position, u.member, 0, u.last_reason, pg_catalog.now() FROM unparked u;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

CREATE FUNCTION allsource.parked_events(subscription text)
RETURNS TABLE ("position" bigint, member int, attempts int, last_reason text, parked_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions := allsource._subscription(parked_events.subscription);
BEGIN
    RETURN QUERY
        SELECT p.position, p.member, p.attempts, p.last_reason, p.parked_at
        FROM allsource.parked_events p WHERE p.subscription_id = s.subscription_id
        ORDER BY p.position;
END
$$;

-- One row per subscription of the caller's tenant and member. Works
-- without preloading (no watermark, lag or holder then) and on standbys.
CREATE FUNCTION allsource.subscriptions()
RETURNS TABLE (name text, member int, "checkpoint" bigint, watermark bigint, lag_events bigint,
               oldest_pending_at timestamptz, holder_pid int, parked bigint, handler text, last_error text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant text := allsource.current_tenant();
    upto bigint;
BEGIN
    BEGIN
        upto := allsource.watermark();
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        upto := NULL;
    END;
    RETURN QUERY
        SELECT s.name, m.member, m.checkpoint, upto, pending.events, pending.oldest,
               allsource._member_holder(s.subscription_id, m.member),
               (SELECT pg_catalog.count(*) FROM allsource.parked_events p
                WHERE p.subscription_id = s.subscription_id AND p.member = m.member),
               s.handler::text, m.last_error
        FROM allsource.subscriptions s
        JOIN allsource.subscription_members m ON m.subscription_id = s.subscription_id
        -- Pending: the events after the checkpoint (parked ones left out),
        -- and those put back in front at or below it.
        LEFT JOIN LATERAL (
            SELECT ahead.events + behind.events AS events,
                   LEAST(ahead.oldest, behind.oldest) AS oldest
            FROM (SELECT pg_catalog.count(*) AS events, pg_catalog.min(e.created_at) AS oldest
                  FROM allsource.events e
                  WHERE e.position > m.checkpoint AND e.position <= upto
                    AND e.tenant_id IS NOT DISTINCT FROM s.tenant_id
                    AND (s.categories IS NULL
                         OR EXISTS (SELECT FROM pg_catalog.unnest(s.categories) AS c (category)
                                    WHERE e.stream_id = c.category OR pg_catalog.starts_with(e.stream_id, c.category || '-')))
                    AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
                    AND (s.members = 1 OR allsource.partition_for(e.stream_id, s.members) = m.member)
                    AND NOT EXISTS (SELECT FROM allsource.parked_events p
                                    WHERE p.subscription_id = s.subscription_id AND p.position = e.position)) ahead,
                 (SELECT pg_catalog.count(*) AS events, pg_catalog.min(e.created_at) AS oldest
                  FROM allsource.subscription_attempts a
                  JOIN allsource.events e ON e.position = a.position
                  WHERE a.subscription_id = s.subscription_id AND a.member = m.member
                    AND a.position <= m.checkpoint) behind
            WHERE upto IS NOT NULL
        ) pending ON true
        WHERE s.tenant_id IS NOT DISTINCT FROM tenant
        ORDER BY s.name, m.member;
END
$$;

COMMENT ON FUNCTION allsource.create_subscription(text, text[], text[], bigint, int, regprocedure, int) IS
    'Creates a named subscription of the caller''s tenant: events after start_after, of the categories and types given (NULL: all), split over members by stream; a handler is called by the subscription workers.';
COMMENT ON FUNCTION allsource.drop_subscription(text) IS
    'Drops the subscription, its checkpoints, attempts and parked events.';
COMMENT ON FUNCTION allsource.receive(text, int, int) IS
    'The member''s next events after its checkpoint, in position order, never past the watermark, parked ones left out; takes the member''s lease for the session (55006 while another session holds it).';
COMMENT ON FUNCTION allsource.ack(text, bigint, int) IS
    'Every event of the member up to and including position is done: moves the checkpoint there in the caller''s transaction.';
COMMENT ON FUNCTION allsource.nack(text, bigint, text, int) IS
    'Records a failed attempt at the event: retry (it stays in front), or parked once max_attempts is reached (the member goes on).';
COMMENT ON FUNCTION allsource.release(text, int) IS
    'Ends this session''s lease of the member (ending the session does too).';
COMMENT ON FUNCTION allsource.retry_parked(text, bigint) IS
    'Puts parked events (all, or the one at position) back in front of the member, with max_attempts new attempts; returns how many.';
COMMENT ON FUNCTION allsource.parked_events(text) IS
    'The subscription''s parked events, with their attempts and last reason.';
COMMENT ON FUNCTION allsource.subscriptions() IS
    'One row per subscription of the caller''s tenant and member: checkpoint, watermark, lag, oldest pending event, holder, parked events, handler, last error.';

-- Who may call them: readers consume, writers also create, drop and retry.
REVOKE EXECUTE ON FUNCTION allsource._refuse_on_standby(text), allsource._subscription(text),
    allsource._check_member(allsource.subscriptions, int),
    allsource._delivers(allsource.subscriptions, int, allsource.events),
    allsource._record_failure(allsource.subscriptions, int, bigint, text),
    allsource._pending(allsource.subscriptions, int, int, bigint, bigint), allsource._handle(bigint, int, int),
    allsource._call_handler(oid, text, anyelement),
    allsource._count_delivered(bigint, int, bigint[]), allsource._count_acked(bigint, int, bigint),
    allsource._count_parked(bigint, int, bigint),
    allsource._check_subscription(text, text[], text[], bigint, int, int), allsource._calling_role(),
    allsource._hold_member(bigint, text, int), allsource._release_member(bigint, int),
    allsource._member_holder(bigint, int),
    allsource.create_subscription(text, text[], text[], bigint, int, regprocedure, int),
    allsource.drop_subscription(text), allsource.retry_parked(text, bigint),
    allsource.receive(text, int, int), allsource.ack(text, bigint, int),
    allsource.nack(text, bigint, text, int), allsource.release(text, int),
    allsource.parked_events(text), allsource.subscriptions()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.receive(text, int, int), allsource.ack(text, bigint, int),
    allsource.nack(text, bigint, text, int), allsource.release(text, int),
    allsource.parked_events(text), allsource.subscriptions()
TO allsource_reader, allsource_writer;
GRANT EXECUTE ON FUNCTION allsource.create_subscription(text, text[], text[], bigint, int, regprocedure, int),
    allsource.drop_subscription(text), allsource.retry_parked(text, bigint)
TO allsource_writer;

-- The subscription workers run _handle as allsource_worker: what it reads and writes.
GRANT SELECT ON allsource.subscriptions TO allsource_worker;
GRANT SELECT, UPDATE ON allsource.subscription_members TO allsource_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON allsource.subscription_attempts TO allsource_worker;
GRANT SELECT, INSERT ON allsource.parked_events TO allsource_worker;
GRANT EXECUTE ON FUNCTION allsource._handle(bigint, int, int),
    allsource._pending(allsource.subscriptions, int, int, bigint, bigint),
    allsource._delivers(allsource.subscriptions, int, allsource.events),
    allsource._record_failure(allsource.subscriptions, int, bigint, text),
    allsource._call_handler(oid, text, anyelement),
    allsource._count_delivered(bigint, int, bigint[]), allsource._count_acked(bigint, int, bigint),
    allsource._count_parked(bigint, int, bigint)
TO allsource_worker;

DO $dump$
BEGIN
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscriptions', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscription_members', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscription_attempts', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.parked_events', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscription_id', '');
END
$dump$;
