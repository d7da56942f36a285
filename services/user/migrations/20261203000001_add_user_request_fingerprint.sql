-- What a CreateUser call asked for, kept beside its request_id: a retry with the same
-- request_id and the same request gets the user back, one with a different request is refused
-- (as payment APIs treat idempotency keys) instead of being handed another request's user.
-- The length prefixes keep the encoding unambiguous.
create function create_user_request_fingerprint(email text, name text, plan text)
returns bytea
language sql immutable strict parallel safe
as $$
    select sha256(convert_to(
        format('%s:%s%s:%s%s', length(email), email, length(name), name, plan), 'UTF8'))
$$;

-- Null for users created before it was kept; their email, name and plan, never changed since,
-- are the request and are fingerprinted on the fly.
alter table users add column request_fingerprint bytea;
