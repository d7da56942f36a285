//! The faults the cluster test injects, one at a time under the load, each with its recovery.

use std::time::Duration;

use system_tests::processes::Service;

use crate::stack::ClusterStack;

/// How long the killed instances stay down while the others carry the load.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// One fault and its recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Nothing,
    OneInstanceOfEachKill9,
    RollingRestart,
}

impl Fault {
    /// Every fault, in the order the test injects them.
    pub const ALL: [Self; 3] = [
        Self::Nothing,
        Self::OneInstanceOfEachKill9,
        Self::RollingRestart,
    ];

    pub fn name(self) -> String {
        match self {
            Self::Nothing => "none (two instances of each)".into(),
            Self::OneInstanceOfEachKill9 => "kill -9 one instance of each".into(),
            Self::RollingRestart => "rolling restart, every instance".into(),
        }
    }

    /// Injects the fault and recovers from it. `Err` says what did not behave (a dirty
    /// SIGTERM exit, a SIGKILL that exited cleanly).
    pub async fn inject(self, stack: &mut ClusterStack) -> Result<(), String> {
        match self {
            Self::Nothing => Ok(()),
            Self::OneInstanceOfEachKill9 => kill_one_of_each(stack).await,
            Self::RollingRestart => rolling_restart(stack).await,
        }
    }
}

/// kill -9 the first instance of each service at once, leaves them down for [`DOWN_FOR`] while
/// the second ones carry on, then starts them again.
async fn kill_one_of_each(stack: &mut ClusterStack) -> Result<(), String> {
    let mut problems = Vec::new();
    for service in Service::ALL {
        let instance = stack.instances_of(service).next().expect("an instance");
        if instance.signal("-KILL").await.success() {
            problems.push(format!("{} exited cleanly after SIGKILL", instance.name));
        }
    }
    tokio::time::sleep(DOWN_FOR).await;
    for service in Service::ALL {
        let instance = stack.instances_of(service).next().expect("an instance");
        instance.process.restart().await;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Every instance in turn: SIGTERM, wait for its exit (it must be clean), start it again, wait
/// until it says SERVING, then the next.
async fn rolling_restart(stack: &mut ClusterStack) -> Result<(), String> {
    let mut problems = Vec::new();
    for instance in &mut stack.instances {
        let status = instance.signal("-TERM").await;
        if !status.success() {
            problems.push(format!(
                "{} did not stop cleanly on SIGTERM ({status}):\n{}",
                instance.name,
                instance.process.log_tail(10)
            ));
        }
        instance.process.restart().await;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
