//! The Rust guest SDK for tandem: write a service as a [`Service`] (the same
//! shape as the native `tandem_core::sdk::Service`: one `on_event` with a
//! [`Context`]), compile it to `wasm32-unknown-unknown`, and tandem runs it
//! inside every replica's state machine (`kind = "wasm"`).
//!
//! Under it are the bindings wit-bindgen generates from
//! `wit/tandem-service.wit` (the `tandem:service` world, in [`bindings`]);
//! [`export_service!`] wires a type to the world's `handler` exports.
//!
//! The determinism contract is the native one: state changes only in
//! `on_event`, time is [`Context::now`], randomness [`Context::random`],
//! iterate only ordered collections (`BTreeMap`), nothing process-local.
//! The host makes most of it impossible to break (no clock, no randomness,
//! no I/O is importable); iteration order is still the guest's duty.
//! Keep the state in the guest's linear memory (ordinary Rust values): the
//! host snapshots and restores the whole instance, so nothing here has to
//! encode it.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "service",
        pub_export_macro: true,
        default_bindings_module: "tandem_guest::bindings",
    });
}

use bindings::tandem::service::host;

/// A connection's identity: assigned in log order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A timer's identity, chosen by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u64);

/// What happened, at the same log position on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client connection completed its handshake (`peer` is "ip:port").
    Opened {
        /// The connection.
        conn: ConnId,
        /// The client's address, as logged.
        peer: String,
    },
    /// Client bytes, next in the stream; framing is arbitrary.
    Data {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The client sent FIN after all the bytes delivered so far.
    PeerClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone (client RST, or this service trapped while
    /// handling its input); forget it.
    Reset {
        /// The connection.
        conn: ConnId,
    },
    /// A timer fired.
    Timer {
        /// The timer.
        id: TimerId,
        /// The generation [`Context::set_timer`] returned.
        generation: u64,
    },
}

/// The service's view of the replicated world while it handles one event.
/// Every method is a call to the host.
#[derive(Debug)]
pub struct Context {
    _private: (),
}

impl Context {
    /// Appends bytes to the connection's output. False: refused by the
    /// output cap; the connection is reset after this event.
    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) -> bool {
        host::send(conn.0, bytes)
    }

    /// Closes the service's side after the output sent so far (FIN, like
    /// `shutdown(SHUT_WR)`; the native SDK's `Context::close`).
    pub fn shutdown(&mut self, conn: ConnId) {
        host::shutdown(conn.0)
    }

    /// Drops the connection now (RST; the native SDK's `Context::abort`).
    pub fn close(&mut self, conn: ConnId) {
        host::close(conn.0)
    }

    /// Arms (or re-arms) a timer for log time `at_ms`; returns the
    /// generation its [`Event::Timer`] will carry.
    pub fn set_timer(&mut self, id: TimerId, at_ms: u64) -> u64 {
        host::set_timer(id.0, at_ms)
    }

    /// Disarms a timer.
    pub fn cancel_timer(&mut self, id: TimerId) {
        host::cancel_timer(id.0)
    }

    /// Log time in milliseconds (never goes back; the same everywhere).
    pub fn now(&self) -> u64 {
        host::now()
    }

    /// The next draw of the entry's random generator (seeded from the log).
    pub fn random(&mut self) -> u64 {
        host::random()
    }

    /// A diagnostic line in the node's log (not part of the state).
    pub fn log(&self, message: &str) {
        host::log(message)
    }
}

/// A replicated application compiled to WebAssembly. One value lives in the
/// guest's memory from the first event on (made with `Default`).
pub trait Service: Default + 'static {
    /// Handles one event, calling the host through `ctx`.
    fn on_event(&mut self, ctx: &mut Context, event: Event);
}

#[doc(hidden)]
pub mod dispatch {
    use super::{Context, Event, Service};
    use std::cell::RefCell;
    use std::thread::LocalKey;

    /// Hands `event` to the service kept in `cell` (made on first use).
    pub fn deliver<S: Service>(cell: &'static LocalKey<RefCell<Option<S>>>, event: Event) {
        cell.with(|slot| {
            let mut slot = slot.borrow_mut();
            let service = slot.get_or_insert_with(S::default);
            service.on_event(&mut Context { _private: () }, event);
        })
    }
}

/// Exports `$ty` (a [`Service`]) as the module's `tandem:service/handler`.
/// Use once, in the cdylib crate: `tandem_guest::export_service!(Broker);`
#[macro_export]
macro_rules! export_service {
    ($ty:ty) => {
        const _: () = {
            use $crate::bindings::exports::tandem::service::handler::Guest;
            use $crate::{ConnId, Event, TimerId};
            ::std::thread_local! {
                static SERVICE: ::std::cell::RefCell<Option<$ty>> =
                    const { ::std::cell::RefCell::new(None) };
            }
            struct Export;
            impl Guest for Export {
                fn opened(conn: u64, peer: String) {
                    $crate::dispatch::deliver(
                        &SERVICE,
                        Event::Opened {
                            conn: ConnId(conn),
                            peer,
                        },
                    );
                }
                fn data(conn: u64, bytes: Vec<u8>) {
                    $crate::dispatch::deliver(
                        &SERVICE,
                        Event::Data {
                            conn: ConnId(conn),
                            bytes,
                        },
                    );
                }
                fn half_closed(conn: u64) {
                    $crate::dispatch::deliver(&SERVICE, Event::PeerClosed { conn: ConnId(conn) });
                }
                fn closed(conn: u64) {
                    $crate::dispatch::deliver(&SERVICE, Event::Reset { conn: ConnId(conn) });
                }
                fn timer(id: u64, generation: u64) {
                    $crate::dispatch::deliver(
                        &SERVICE,
                        Event::Timer {
                            id: TimerId(id),
                            generation,
                        },
                    );
                }
            }
    $crate::bindings::export!(Export with_types_in $crate::bindings);
        };
    };
}
