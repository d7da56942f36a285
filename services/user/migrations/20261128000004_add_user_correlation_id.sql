-- The x-request-id of the CreateUser call, so an operator can go from a flow's correlation_id
-- (in every event and log line) back to the user. Null for users created before it was kept.
alter table users add column correlation_id text;

create index users_correlation_id_idx on users (correlation_id, create_time, user_id);
