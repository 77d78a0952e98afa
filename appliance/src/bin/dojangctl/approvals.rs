//! `approvals list`, `approve ID` and `reject ID`: the officer proposals
//! waiting on the daemon (over --api). The requests and their output are
//! in [`crate::officer`]; this module owns the command line.

use clap::Subcommand;

use crate::officer::{self, Connection};

#[derive(Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Proposals, newest first.
    List,
}

// The proposal named by `approve ID` and `reject ID`. The subcommands'
// help texts are their variants' doc comments in `Command`.
#[derive(clap::Args)]
pub(crate) struct ProposalArgs {
    /// The proposal's id.
    id: String,
    /// Approve only if the proposal's digest is this one (for scripts; on
    /// a terminal the digest's first characters are asked for instead).
    #[arg(long)]
    expect: Option<String>,
}

/// `approvals …`.
pub(crate) fn run(
    command: ApprovalsCommand,
    conn: &Connection,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        ApprovalsCommand::List => officer::list_proposals(conn, as_json),
    }
}

/// `approve ID`.
pub(crate) fn approve(
    conn: &Connection,
    proposal: &ProposalArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    officer::decide(
        conn,
        &proposal.id,
        true,
        proposal.expect.as_deref(),
        as_json,
    )
}

/// `reject ID`.
pub(crate) fn reject(
    conn: &Connection,
    proposal: &ProposalArgs,
    as_json: bool,
) -> anyhow::Result<()> {
    officer::decide(conn, &proposal.id, false, None, as_json)
}
