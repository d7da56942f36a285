//! The progress bar of a run on stderr: drawn only when stderr is a terminal, so a run whose
//! stderr goes to a file or a pipe (bench.sh keeps it for its errors) writes nothing there.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::plan::{Extent, Observations};

/// Steps of the bar of a run that lasts a time: tenths of a second.
const TICKS_PER_SECOND: u64 = 10;

/// A bar over the run's calls, or its seconds, on stderr; hidden when stderr is not a terminal.
pub(crate) fn bar(extent: Extent, label: &str) -> ProgressBar {
    let length = match extent {
        Extent::Users(users) => users,
        Extent::Seconds(seconds) => seconds * TICKS_PER_SECOND,
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix}[{bar:30}] {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// Moves the bar every 200 ms with what the run observed so far; never returns.
pub(crate) async fn follow(
    bar: ProgressBar,
    observations: Arc<Mutex<Observations>>,
    started: Instant,
    extent: Extent,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let (accepted, rejected, failed, completed) = {
            let o = observations.lock().unwrap_or_else(|e| e.into_inner());
            (o.sent.len() as u64, o.rejected, o.failed, o.completed.len())
        };
        let elapsed = started.elapsed();
        let (position, done) = match extent {
            Extent::Users(users) => {
                let calls = accepted + rejected + failed;
                (calls, format!("{calls} of {users} calls"))
            }
            Extent::Seconds(seconds) => (
                (elapsed.as_secs_f64() * TICKS_PER_SECOND as f64) as u64,
                format!("{:.1} of {seconds} s", elapsed.as_secs_f64()),
            ),
        };
        bar.set_position(position);
        bar.set_message(format!(
            "{done}  accepted {accepted}  rejected {rejected}  failed {failed}  completed {completed}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// The test [`a_run_draws_its_bar`] runs in a child process of this test binary with
    /// stderr a pipe, as bench.sh runs loadgen.
    const CHILD: &str = "progress::tests::a_run_draws_its_bar";

    #[test]
    fn the_progress_bar_writes_nothing_to_stderr_when_it_is_a_pipe() {
        // Arrange
        let mut child = Command::new(std::env::current_exe().expect("the test binary"));
        child.args([
            CHILD,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);

        // Act
        let output = child.output().expect("the test binary runs");

        // Assert
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the child did not pass: {stdout}"
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "",
            "the bar wrote to a piped stderr"
        );
    }

    #[tokio::test]
    #[ignore = "the_progress_bar_writes_nothing_to_stderr_when_it_is_a_pipe runs it in a child"]
    async fn a_run_draws_its_bar() {
        let observations = Arc::new(Mutex::new(Observations::default()));
        for extent in [Extent::Users(10), Extent::Seconds(1)] {
            let bar = bar(extent, "step 1/1 ");
            assert!(bar.is_hidden(), "stderr is a pipe: the bar must hide");
            let shown = follow(bar.clone(), observations.clone(), Instant::now(), extent);
            for user in 0..5 {
                observations
                    .lock()
                    .expect("not poisoned")
                    .sent
                    .insert(user.to_string(), Instant::now());
            }
            // Long enough for a few of the bar's updates.
            let _ = tokio::time::timeout(Duration::from_millis(500), shown).await;
            bar.finish_and_clear();
        }
    }
}
