//! `rbd-wasm pool`: list the pools of a store, or create one in the embedded store.

use clap::Subcommand;
use rbd_wasm::output::terminal_safe;

use crate::{open_backend, open_embedded, StoreArgs};

#[derive(Subcommand)]
pub enum PoolCommand {
    /// List pools.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Create a pool in the embedded store.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
}


pub fn pool_command(cmd: PoolCommand) -> anyhow::Result<()> {
    match cmd {
        PoolCommand::Ls { store } => {
            for pool in open_backend(&store)?.list_pools()? {
                println!("{}", terminal_safe(&pool));
            }
        }
        PoolCommand::Create { store, name } => open_embedded(&store)?.create_pool(&name)?,
    }
    Ok(())
}
