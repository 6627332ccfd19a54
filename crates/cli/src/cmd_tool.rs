//! `tandem tool ...`: small programs the lab and the tests run inside node
//! namespaces.

use anyhow::{Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ToolArgs {
    #[command(subcommand)]
    tool: Tool,
}

#[derive(clap::Subcommand)]
enum Tool {
    /// A plain TCP echo server, the stand-in for an application that knows
    /// nothing of tandem. It serves the sockets it inherits (descriptors 3,
    /// 4, ... counted by LISTEN_FDS), connections sent over an inherited
    /// Unix socket (SCM_RIGHTS, as a planned move hands them over), and
    /// whatever it accepts on --listen. On SIGUSR1 it stops itself at a safe
    /// point: it never holds a byte in memory that is not also in a socket.
    EchoServer {
        /// Address to listen on; bound with IP_FREEBIND, so it may start
        /// before the VIP is configured on this node.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
    },
    /// The kv service on one node with no capture and no replication: plain
    /// sockets, one thread, each poll's worth of input applied as one entry
    /// (the baseline of `tandem bench kv`).
    KvServer {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
    },
}

pub fn run(args: ToolArgs) -> Result<ExitCode> {
    match args.tool {
        Tool::EchoServer { listen } => {
            let mut inherited = Vec::new();
            let mut channels = Vec::new();
            for fd in tandem_sys::process::inherited_fds() {
                match socket2::SockRef::from(&fd).domain()? {
                    socket2::Domain::UNIX => channels.push(UnixStream::from(fd)),
                    _ => inherited.push(TcpStream::from(fd)),
                }
            }
            let listener = listen
                .map(|addr| {
                    tandem_moves::echo::bind_listener(addr)
                        .with_context(|| format!("listening on {addr}"))
                })
                .transpose()?;
            if listener.is_none() && inherited.is_empty() && channels.is_empty() {
                anyhow::bail!(
                    "nothing to serve: give --listen ADDR:PORT or inherit sockets (LISTEN_FDS)"
                );
            }
            tracing::info!(
                inherited = inherited.len(),
                channels = channels.len(),
                ?listen,
                "echo server up"
            );
            tandem_moves::echo::serve(listener, inherited, channels)?;
            Ok(ExitCode::SUCCESS)
        }
        Tool::KvServer { listen } => {
            tandem_bench::kv_host::serve(listen)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
