//! `eventsctl` against the real broker: the binary as an operator runs it, on dead letters in a
//! private namespace; `trace` against the three services running in the test (see [`trace`]).

mod trace;

use std::process::{Command, Output, Stdio};

use lapin::types::{AMQPValue, FieldTable};
use messaging::{
    Envelope,
    retry::{
        ATTEMPTS_HEADER, FAILURE_KIND_HEADER, FAILURE_MESSAGE_HEADER, LAST_FAILURE_HEADER,
        ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, text_header,
    },
    topology::{ORDER_SERVICE_USER_CREATED, PAYMENT_SERVICE_ORDER_CREATED},
};
use proto::{order::v1::OrderCreated, user::v1::UserCreated};
use test_support::{Sandbox, new_context, next_delivery, queue_depth};

/// Runs eventsctl in `sandbox`'s namespace with `args`, with no terminal on standard input.
fn eventsctl(sandbox: &Sandbox, args: &[&str]) -> Output {
    let namespace = sandbox.topology.namespace().as_str();
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventsctl"));
    command
        .args([
            "--amqp-url",
            &test_support::broker_url(),
            "--bus-namespace",
            namespace,
        ])
        .args(args);
    run_bounded(command)
}

/// Runs `command` to completion, or kills it (by its pid) and fails after a minute: a hung CLI
/// must fail the test, not stall the suite.
fn run_bounded(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eventsctl runs");
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(output) => output.expect("eventsctl ends"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("eventsctl did not finish within a minute");
        }
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A dead letter as a consumer leaves it: the original message plus failure headers.
async fn dead_letter(
    amqp: &lapin::Connection,
    sandbox: &Sandbox,
    envelope: &Envelope,
    queue: &messaging::topology::Subscription,
    kind: &str,
    error: &str,
    failed_at: &str,
) {
    let mut properties = envelope.properties("test");
    let mut headers: FieldTable = properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers.insert(FAILURE_KIND_HEADER.into(), text(kind));
    headers.insert(FAILURE_MESSAGE_HEADER.into(), text(error));
    headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(1));
    headers.insert(LAST_FAILURE_HEADER.into(), text(failed_at));
    headers.insert(
        ORIGINAL_EXCHANGE_HEADER.into(),
        text(&sandbox.topology.exchange()),
    );
    headers.insert(ORIGINAL_ROUTING_KEY_HEADER.into(), text(queue.routing_key));
    properties = properties.with_headers(headers);
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .basic_publish(
            sandbox.topology.dead_letter_exchange().into(),
            sandbox.topology.queue(queue).into(),
            Default::default(),
            &envelope.payload,
            properties,
        )
        .await
        .expect("publish");
}

fn user_created(email: &str) -> Envelope {
    let event = UserCreated {
        user_id: uuid::Uuid::new_v4().to_string(),
        email: email.into(),
        name: "Ada".into(),
        ..UserCreated::default()
    };
    Envelope::new(&event, &new_context())
}

fn order_created() -> Envelope {
    let event = OrderCreated {
        order_id: uuid::Uuid::new_v4().to_string(),
        user_email: "ada+fail@example.com".into(),
        amount_minor: 999,
        currency: "USD".into(),
        ..OrderCreated::default()
    };
    Envelope::new(&event, &new_context())
}

/// A sandbox with its topology declared, and two dead letters on user_created and one on
/// order_created.
async fn with_dead_letters() -> (Sandbox, lapin::Connection, Vec<Envelope>) {
    let sandbox = Sandbox::new();
    let amqp = test_support::broker().await;
    sandbox
        .topology
        .declare(&amqp, messaging::topology::SUBSCRIPTIONS)
        .await
        .expect("topology");
    let envelopes = vec![
        user_created("a@example.com"),
        user_created("b@example.com"),
        order_created(),
    ];
    dead_letter(
        &amqp,
        &sandbox,
        &envelopes[0],
        &ORDER_SERVICE_USER_CREATED,
        "permanent",
        "boom",
        "2026-01-01T00:00:00Z",
    )
    .await;
    dead_letter(
        &amqp,
        &sandbox,
        &envelopes[1],
        &ORDER_SERVICE_USER_CREATED,
        "permanent",
        "boom",
        "2026-06-01T00:00:00Z",
    )
    .await;
    dead_letter(
        &amqp,
        &sandbox,
        &envelopes[2],
        &PAYMENT_SERVICE_ORDER_CREATED,
        "retries_exhausted",
        "gateway timeout",
        "2026-06-01T00:00:00Z",
    )
    .await;
    let user_dlq = sandbox
        .topology
        .dead_letter_queue(&ORDER_SERVICE_USER_CREATED);
    test_support::eventually(|| async { queue_depth(&amqp, &user_dlq).await == 2 }).await;
    (sandbox, amqp, envelopes)
}

#[tokio::test]
async fn list_counts_each_dead_letter_queue_and_summarises_by_type_and_error() {
    let (sandbox, _amqp, _) = with_dead_letters().await;

    let output = eventsctl(&sandbox, &["dlq", "list"]);

    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let user_dlq = sandbox
        .topology
        .dead_letter_queue(&ORDER_SERVICE_USER_CREATED);
    let line = text
        .lines()
        .find(|l| l.starts_with(&user_dlq))
        .expect("a line per queue");
    assert!(line.trim_end().ends_with(" 2"), "{line}");
    assert!(
        text.contains("2  user.v1.UserCreated  permanent  last error: boom"),
        "{text}"
    );
    assert!(
        text.contains("1  order.v1.OrderCreated  retries_exhausted  last error: gateway timeout"),
        "{text}"
    );
}

#[tokio::test]
async fn given_a_cluster_list_it_uses_the_first_node_that_answers() {
    let (sandbox, _amqp, _) = with_dead_letters().await;
    let down = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        test_support::unused_port()
    );
    let list = format!("{down},{}", test_support::broker_url());

    let mut command = Command::new(env!("CARGO_BIN_EXE_eventsctl"));
    command
        .env("AMQP_URL", &list)
        .env("BUS_NAMESPACE", sandbox.topology.namespace().as_str())
        .args(["dlq", "list"]);
    let output = run_bounded(command);

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(
            &sandbox
                .topology
                .dead_letter_queue(&ORDER_SERVICE_USER_CREATED)
        ),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn show_decodes_payloads_to_json_with_their_failure_headers_and_leaves_them_queued() {
    let (sandbox, amqp, envelopes) = with_dead_letters().await;

    let output = eventsctl(
        &sandbox,
        &["dlq", "show", "--queue", "order_service.user_created"],
    );

    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("\"email\": \"a@example.com\""), "{text}");
    assert!(
        text.contains(&envelopes[1].message_id.to_string()),
        "{text}"
    );
    assert!(text.contains("\"kind\": \"permanent\""), "{text}");
    assert!(
        !text.contains("order.v1.OrderCreated"),
        "only the queue asked for: {text}"
    );
    let user_dlq = sandbox
        .topology
        .dead_letter_queue(&ORDER_SERVICE_USER_CREATED);
    // Showing consumes nothing: what it fetched goes back when its channel closes (a quorum
    // queue counts it as ready again a moment later).
    test_support::eventually(|| async { queue_depth(&amqp, &user_dlq).await == 2 }).await;
}

#[tokio::test]
async fn a_dry_run_replays_nothing() {
    let (sandbox, amqp, _) = with_dead_letters().await;

    let output = eventsctl(&sandbox, &["dlq", "replay", "--dry-run"]);

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("would replay 3 message(s)"),
        "{}",
        stdout(&output)
    );
    // What the command fetched and gave back counts as ready again a moment later.
    test_support::eventually(|| async {
        test_support::dead_letters(&amqp, &sandbox.topology).await == 3
    })
    .await;
}

#[tokio::test]
async fn replay_by_message_id_sends_that_message_back_to_its_route_with_its_id_and_no_failure_headers()
 {
    // Arrange
    let (sandbox, amqp, envelopes) = with_dead_letters().await;
    let mut captured = test_support::capture(&amqp, &sandbox.topology, "user_created").await;
    let target = envelopes[1].message_id.to_string();

    // Act
    let output = eventsctl(
        &sandbox,
        &["dlq", "replay", "--message-id", &target, "--rate", "100"],
    );

    // Assert
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("replayed 1 message(s)"),
        "{}",
        stdout(&output)
    );
    let replayed = next_delivery(&mut captured).await;
    assert_eq!(
        replayed
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        Some(target)
    );
    assert_eq!(replayed.data, envelopes[1].payload);
    assert_eq!(text_header(&replayed.properties, FAILURE_KIND_HEADER), None);
    assert!(text_header(&replayed.properties, "replayed_time").is_some());
    // What the command fetched and gave back counts as ready again a moment later.
    test_support::eventually(|| async {
        test_support::dead_letters(&amqp, &sandbox.topology).await == 2
    })
    .await;
}

#[tokio::test]
async fn replay_filters_by_type_and_failure_time() {
    let (sandbox, amqp, _) = with_dead_letters().await;

    let output = eventsctl(
        &sandbox,
        &[
            "dlq",
            "replay",
            "--type",
            "user.v1.UserCreated",
            "--since",
            "2026-03-01T00:00:00Z",
        ],
    );

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("replayed 1 message(s)"),
        "{}",
        stdout(&output)
    );
    // What the command fetched and gave back counts as ready again a moment later.
    test_support::eventually(|| async {
        test_support::dead_letters(&amqp, &sandbox.topology).await == 2
    })
    .await;
}

#[tokio::test]
async fn purge_asks_first_and_with_yes_empties_the_queues() {
    let (sandbox, amqp, _) = with_dead_letters().await;

    let refused = eventsctl(&sandbox, &["dlq", "purge"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(
        test_support::dead_letters(&amqp, &sandbox.topology).await,
        3
    );

    let purged = eventsctl(
        &sandbox,
        &[
            "dlq",
            "purge",
            "--queue",
            "payment_service.order_created",
            "--yes",
        ],
    );
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert_eq!(
        test_support::dead_letters(&amqp, &sandbox.topology).await,
        2
    );
}

#[tokio::test]
async fn bad_arguments_and_an_unreachable_broker_are_clear_errors() {
    let sandbox = Sandbox::new();

    let unknown_queue = eventsctl(&sandbox, &["dlq", "show", "--queue", "nope"]);
    assert!(!unknown_queue.status.success());
    assert!(
        stderr(&unknown_queue).contains("unknown queue \"nope\""),
        "{}",
        stderr(&unknown_queue)
    );

    let bad_time = eventsctl(&sandbox, &["dlq", "replay", "--since", "yesterday"]);
    assert_eq!(bad_time.status.code(), Some(2));
    assert!(
        stderr(&bad_time).contains("RFC 3339"),
        "{}",
        stderr(&bad_time)
    );

    let bad_rate = eventsctl(&sandbox, &["dlq", "replay", "--rate", "0"]);
    assert_eq!(bad_rate.status.code(), Some(2));

    let port = test_support::unused_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventsctl"));
    command.args([
        "--amqp-url",
        &format!("amqp://guest:secret@127.0.0.1:{port}/%2f"),
        "dlq",
        "list",
    ]);
    let unreachable = run_bounded(command);
    assert!(!unreachable.status.success());
    let message = stderr(&unreachable);
    assert!(
        message.contains(&format!("cannot reach RabbitMQ at 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(!message.contains("secret"));

    let missing = eventsctl(&sandbox, &["dlq", "list"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );
}

/// `eventsctl topology delete` with the sandbox's retry delays and `args`.
fn delete_topology(sandbox: &Sandbox, args: &[&str]) -> Output {
    let mut all = vec![
        "topology",
        "delete",
        "--retry-delays",
        test_support::TEST_RETRY_DELAYS,
    ];
    all.extend_from_slice(args);
    eventsctl(sandbox, &all)
}

#[tokio::test]
async fn topology_delete_keeps_queues_in_use_or_holding_messages_unless_told_to_purge() {
    // Arrange: a declared namespace, a message waiting in one queue, a consumer on another.
    let (sandbox, amqp, _) = with_dead_letters().await;
    let held = sandbox
        .topology
        .dead_letter_queue(&ORDER_SERVICE_USER_CREATED);
    let consumed = sandbox.topology.queue(&ORDER_SERVICE_USER_CREATED);
    let channel = amqp.create_channel().await.expect("a channel");
    channel
        .basic_consume(
            consumed.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("a consumer");

    // Act and assert: refused while consumed, then while holding messages; no terminal to ask.
    let in_use = delete_topology(&sandbox, &["--yes"]);
    assert!(!in_use.status.success());
    assert!(
        stderr(&in_use).contains(&format!("consumers are attached to {consumed} (1)")),
        "{}",
        stderr(&in_use)
    );
    let _ = channel.close(200, "done".into()).await;
    let holding = delete_topology(&sandbox, &["--yes"]);
    assert!(!holding.status.success());
    assert!(
        stderr(&holding).contains(&format!("messages wait in {held} (2)")),
        "{}",
        stderr(&holding)
    );
    let unasked = delete_topology(&sandbox, &["--purge"]);
    assert!(stderr(&unasked).contains("refusing to delete without confirmation"));
    assert_eq!(test_support::queue_depth(&amqp, &held).await, 2);

    // Act: told to purge.
    let deleted = delete_topology(&sandbox, &["--yes", "--purge"]);

    // Assert: every queue and both exchanges are gone, so the namespace can be declared again
    // with another queue type.
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let text = stdout(&deleted);
    assert_eq!(
        text.lines()
            .filter(|line| line.starts_with("deleted queue"))
            .count(),
        sandbox.topology.queues().len(),
        "{text}"
    );
    assert!(text.contains(&format!("deleted exchange {}", sandbox.topology.exchange())));
    sandbox
        .topology
        .clone()
        .with_queue_type(messaging::QueueType::Classic)
        .declare(&amqp, messaging::topology::SUBSCRIPTIONS)
        .await
        .expect("declared again, as classic queues");
}

#[tokio::test]
async fn topology_delete_names_only_what_existed_and_a_second_run_finds_nothing() {
    // Arrange: a declared namespace with empty queues.
    let sandbox = Sandbox::new();
    let amqp = test_support::broker().await;
    sandbox
        .topology
        .declare(&amqp, messaging::topology::SUBSCRIPTIONS)
        .await
        .expect("topology");

    // Act: delete it, then delete it again.
    let first = delete_topology(&sandbox, &["--yes"]);
    let second = delete_topology(&sandbox, &["--yes"]);

    // Assert: the first run deleted every queue and both exchanges and said so; nothing of the
    // namespace is left; the second run deleted nothing and said that, successfully.
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    for queue in sandbox.topology.queues() {
        assert!(
            text.contains(&format!("deleted queue {queue} (0 message(s))")),
            "{text}"
        );
        let channel = amqp.create_channel().await.expect("a channel");
        let state = messaging::topology::inspect(&channel, &queue)
            .await
            .expect("inspected");
        assert_eq!(state, None, "{queue} is left");
    }
    for exchange in [
        sandbox.topology.exchange(),
        sandbox.topology.dead_letter_exchange(),
    ] {
        assert!(
            text.contains(&format!("deleted exchange {exchange}\n")),
            "{text}"
        );
        let channel = amqp.create_channel().await.expect("a channel");
        let exists = messaging::topology::exchange_exists(&channel, &exchange)
            .await
            .expect("inspected");
        assert!(!exists, "{exchange} is left");
    }
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        stdout(&second),
        format!(
            "nothing to delete: no queue or exchange of namespace {:?}\n",
            sandbox.topology.namespace().as_str()
        )
    );
}
