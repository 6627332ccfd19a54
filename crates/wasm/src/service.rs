//! The host proper: a compiled module ([`LoadedModule`]) and a running
//! instance of it as a [`Service`] ([`WasmService`]).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tandem_core::sdk::{ConnId, Context, Event, Millis, Rng, SdkError, Service, TimerId};
use wasmtime::{
    Caller, Engine, ExternType, Global, Instance, Linker, Memory, Module, Mutability, Store,
    StoreLimits, StoreLimitsBuilder, Trap, TypedFunc, Val,
};

use crate::abi::{self, HOST_FUNCTIONS, MEMORY, REALLOC};
use crate::image::{GlobalValue, Image, PAGE};
use crate::registry::{self, ModuleId};
use crate::{WasmConfig, WasmError, HOST_MODULE};

/// Longest `log` message kept, in bytes (the rest is cut).
const MAX_LOG_MESSAGE: u32 = 4096;

/// A module compiled for this host's deterministic engine, checked against
/// the ABI, with its identity. Shared by every instance of it.
pub struct LoadedModule {
    module: Module,
    linker: Linker<HostState>,
    hash: [u8; 32],
    id: ModuleId,
    config: WasmConfig,
    /// Exported mutable globals, in export order (saved in images).
    globals: Vec<String>,
    /// The module's size in bytes.
    size: usize,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &registry::hex(&self.hash))
            .field("config", &self.config)
            .field("size", &self.size)
            .finish()
    }
}

/// The engine settings that make execution deterministic (crate docs).
fn engine(config: &WasmConfig) -> Result<Engine, WasmError> {
    let mut c = wasmtime::Config::new();
    // Threads are not compiled into this wasmtime (no `threads` feature),
    // so the shared-memory proposal is off; the rest is set here.
    c.consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .wasm_relaxed_simd(false)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .max_wasm_stack(config.max_stack);
    Engine::new(&c).map_err(|e| WasmError::Compile(e.to_string()))
}

impl LoadedModule {
    /// Compiles `bytes` and checks them against the ABI ([`crate::abi`]):
    /// only host imports, the handler exports, `memory`, `cabi_realloc`.
    pub fn load(bytes: &[u8], config: WasmConfig) -> Result<Arc<LoadedModule>, WasmError> {
        config.validate().map_err(WasmError::Config)?;
        let engine = engine(&config)?;
        let module = Module::new(&engine, bytes).map_err(|e| WasmError::Compile(e.to_string()))?;
        for import in module.imports() {
            let known = import.module() == HOST_MODULE
                && HOST_FUNCTIONS.contains(&import.name())
                && matches!(import.ty(), ExternType::Func(_));
            if !known {
                return Err(WasmError::Import {
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        let mut required: Vec<String> = ["opened", "data", "half-closed", "closed", "timer"]
            .iter()
            .map(|n| abi::handler(n))
            .collect();
        required.push(REALLOC.into());
        for name in &required {
            if !matches!(module.get_export(name), Some(ExternType::Func(_))) {
                return Err(WasmError::Export(name.clone()));
            }
        }
        if !matches!(module.get_export(MEMORY), Some(ExternType::Memory(_))) {
            return Err(WasmError::Export(MEMORY.into()));
        }
        let globals = module
            .exports()
            .filter_map(|e| match e.ty() {
                ExternType::Global(g) if g.mutability() == Mutability::Var => {
                    Some(e.name().to_string())
                }
                _ => None,
            })
            .collect();
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let mut h = Sha256::new();
        h.update(hash);
        h.update(config.fuel_per_event.to_le_bytes());
        h.update(config.max_memory.to_le_bytes());
        h.update((config.max_stack as u64).to_le_bytes());
        let id = ModuleId(h.finalize().into());
        let linker = host_linker(&engine)?;
        Ok(Arc::new(LoadedModule {
            module,
            linker,
            hash,
            id,
            config,
            globals,
            size: bytes.len(),
        }))
    }

    /// SHA-256 of the module's bytes (what `sha256sum module.wasm` prints).
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The identity replicas must agree on (module and settings).
    pub fn id(&self) -> ModuleId {
        self.id
    }

    /// The settings it runs with.
    pub fn config(&self) -> WasmConfig {
        self.config
    }

    /// The module's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// What host functions see: the event's context (lent for the call), the
/// instance's memory, and the store's resource limits.
struct HostState {
    limits: StoreLimits,
    ctx: Option<Context>,
    memory: Option<Memory>,
}

fn no_event() -> wasmtime::Error {
    wasmtime::Error::msg("a host function was called outside an event")
}

/// Copies `len` bytes at `ptr` out of the guest's memory (a trap if they
/// are not all inside it).
fn guest_bytes(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<Vec<u8>> {
    let memory = caller.data().memory.ok_or_else(no_event)?;
    let start = ptr as usize;
    let end = start.saturating_add(len as usize);
    memory
        .data(caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| wasmtime::Error::msg("a host call pointed outside the guest's memory"))
}

fn ctx<'a>(caller: &'a mut Caller<'_, HostState>) -> wasmtime::Result<&'a mut Context> {
    caller.data_mut().ctx.as_mut().ok_or_else(no_event)
}

/// The `tandem:service/host` functions ([`crate::abi`]).
fn host_linker(engine: &Engine) -> Result<Linker<HostState>, WasmError> {
    let mut linker = Linker::new(engine);
    let err = |e: wasmtime::Error| WasmError::Instantiate(e.to_string());
    linker
        .func_wrap(
            HOST_MODULE,
            "send",
            |mut caller: Caller<'_, HostState>,
             conn: u64,
             ptr: u32,
             len: u32|
             -> wasmtime::Result<u32> {
                let bytes = guest_bytes(&caller, ptr, len)?;
                Ok(u32::from(ctx(&mut caller)?.try_send(ConnId(conn), bytes)))
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "shutdown",
            |mut caller: Caller<'_, HostState>, conn: u64| -> wasmtime::Result<()> {
                ctx(&mut caller)?.close(ConnId(conn));
                Ok(())
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "close",
            |mut caller: Caller<'_, HostState>, conn: u64| -> wasmtime::Result<()> {
                ctx(&mut caller)?.abort(ConnId(conn));
                Ok(())
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "set-timer",
            |mut caller: Caller<'_, HostState>, id: u64, at: u64| -> wasmtime::Result<u64> {
                Ok(ctx(&mut caller)?.set_timer(TimerId(id), Millis(at)))
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "cancel-timer",
            |mut caller: Caller<'_, HostState>, id: u64| -> wasmtime::Result<()> {
                ctx(&mut caller)?.cancel_timer(TimerId(id));
                Ok(())
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "now",
            |mut caller: Caller<'_, HostState>| -> wasmtime::Result<u64> {
                Ok(ctx(&mut caller)?.now().0)
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "random",
            |mut caller: Caller<'_, HostState>| -> wasmtime::Result<u64> {
                Ok(ctx(&mut caller)?.rng().next_u64())
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            HOST_MODULE,
            "log",
            |caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<()> {
                let bytes = guest_bytes(&caller, ptr, len.min(MAX_LOG_MESSAGE))?;
                tracing::info!(target: "tandem_wasm::guest", "{}", String::from_utf8_lossy(&bytes));
                Ok(())
            },
        )
        .map_err(err)?;
    Ok(linker)
}

/// The guest's exports, typed.
struct Handlers {
    realloc: TypedFunc<(u32, u32, u32, u32), u32>,
    opened: TypedFunc<(u64, u32, u32), ()>,
    data: TypedFunc<(u64, u32, u32), ()>,
    half_closed: TypedFunc<u64, ()>,
    closed: TypedFunc<u64, ()>,
    timer: TypedFunc<(u64, u64), ()>,
}

/// One instance in its own store.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    globals: Vec<Global>,
    handlers: Handlers,
}

impl Live {
    /// A fresh instance of `module` (its memory as the module's data
    /// segments make it).
    fn new(module: &LoadedModule) -> Result<Live, WasmError> {
        let err = |e: wasmtime::Error| WasmError::Instantiate(e.to_string());
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(module.config.max_memory).unwrap_or(usize::MAX))
            .instances(1)
            .memories(1)
            .tables(4)
            .table_elements(1 << 20)
            .build();
        let mut store = Store::new(
            module.module.engine(),
            HostState {
                limits,
                ctx: None,
                memory: None,
            },
        );
        store.limiter(|s| &mut s.limits);
        // Start functions and data segments run metered too.
        store.set_fuel(module.config.fuel_per_event).map_err(err)?;
        let instance: Instance = module
            .linker
            .instantiate(&mut store, &module.module)
            .map_err(err)?;
        let memory = instance
            .get_memory(&mut store, MEMORY)
            .ok_or_else(|| WasmError::Export(MEMORY.into()))?;
        store.data_mut().memory = Some(memory);
        let mut globals = Vec::new();
        for name in &module.globals {
            globals.push(
                instance
                    .get_global(&mut store, name)
                    .ok_or_else(|| WasmError::Export(name.clone()))?,
            );
        }
        let func =
            |store: &mut Store<HostState>, name: &str| -> Result<wasmtime::Func, WasmError> {
                instance
                    .get_func(&mut *store, name)
                    .ok_or_else(|| WasmError::Export(name.into()))
            };
        let handlers = Handlers {
            realloc: func(&mut store, REALLOC)?.typed(&store).map_err(err)?,
            opened: func(&mut store, &abi::handler("opened"))?
                .typed(&store)
                .map_err(err)?,
            data: func(&mut store, &abi::handler("data"))?
                .typed(&store)
                .map_err(err)?,
            half_closed: func(&mut store, &abi::handler("half-closed"))?
                .typed(&store)
                .map_err(err)?,
            closed: func(&mut store, &abi::handler("closed"))?
                .typed(&store)
                .map_err(err)?,
            timer: func(&mut store, &abi::handler("timer"))?
                .typed(&store)
                .map_err(err)?,
        };
        Ok(Live {
            store,
            memory,
            globals,
            handlers,
        })
    }

    /// A fresh instance holding `image`'s memory and globals.
    fn from_image(module: &LoadedModule, image: &Image) -> Result<Live, WasmError> {
        let mut live = Live::new(module)?;
        if image.globals.len() != live.globals.len() {
            return Err(WasmError::Instantiate(format!(
                "the image has {} globals, the module exports {} mutable ones",
                image.globals.len(),
                live.globals.len()
            )));
        }
        let have = live.memory.data_size(&live.store);
        let want = image.memory.len();
        if want < have {
            return Err(WasmError::Instantiate(format!(
                "the image's memory ({want} bytes) is smaller than the module's initial memory ({have} bytes)"
            )));
        }
        live.memory
            .grow(&mut live.store, ((want - have) / PAGE) as u64)
            .map_err(|e| WasmError::Instantiate(format!("growing memory to {want} bytes: {e}")))?;
        live.memory
            .data_mut(&mut live.store)
            .get_mut(..want)
            .ok_or_else(|| WasmError::Instantiate("memory did not grow".into()))?
            .copy_from_slice(&image.memory);
        for (global, value) in live.globals.iter().zip(&image.globals) {
            let val = match *value {
                GlobalValue::I32(v) => Val::I32(v as i32),
                GlobalValue::I64(v) => Val::I64(v as i64),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
            };
            global
                .set(&mut live.store, val)
                .map_err(|e| WasmError::Instantiate(format!("restoring a global: {e}")))?;
        }
        Ok(live)
    }

    /// Copies the instance's state into `image` (reusing its buffers).
    fn capture(&mut self, image: &mut Image) {
        let data = self.memory.data(&self.store);
        image.memory.clear();
        image.memory.extend_from_slice(data);
        image.globals.clear();
        for global in &self.globals {
            let value = match global.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v as u32),
                Val::I64(v) => GlobalValue::I64(v as u64),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.into()),
                // Reference-typed globals are not state a snapshot can
                // carry; the module check does not let them be mutable
                // exports in practice (reference types need tables).
                _ => GlobalValue::I32(0),
            };
            image.globals.push(value);
        }
    }

    /// Copies `bytes` into guest memory allocated with `cabi_realloc`
    /// (the guest owns them after the call they are passed to).
    fn lend(&mut self, bytes: &[u8]) -> wasmtime::Result<(u32, u32)> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| wasmtime::Error::msg("an argument over 4 GiB"))?;
        let ptr = self
            .handlers
            .realloc
            .call(&mut self.store, (0, 0, 1, len))?;
        let start = ptr as usize;
        self.memory
            .data_mut(&mut self.store)
            .get_mut(start..start + bytes.len())
            .ok_or_else(|| wasmtime::Error::msg("cabi_realloc returned memory outside the guest"))?
            .copy_from_slice(bytes);
        Ok((ptr, len))
    }

    /// Calls the handler for `event`, with `fuel` for all of it.
    fn deliver(&mut self, event: &Event, fuel: u64) -> wasmtime::Result<()> {
        self.store.set_fuel(fuel)?;
        match event {
            Event::Opened { conn, peer } => {
                let (ptr, len) = self.lend(peer.to_string().as_bytes())?;
                self.handlers
                    .opened
                    .call(&mut self.store, (conn.0, ptr, len))
            }
            Event::Data { conn, bytes } => {
                let (ptr, len) = self.lend(bytes)?;
                self.handlers.data.call(&mut self.store, (conn.0, ptr, len))
            }
            Event::PeerClosed { conn } => self.handlers.half_closed.call(&mut self.store, conn.0),
            Event::Reset { conn } => self.handlers.closed.call(&mut self.store, conn.0),
            Event::Timer { id, generation } => self
                .handlers
                .timer
                .call(&mut self.store, (id.0, *generation)),
        }
    }
}

/// What went wrong in a guest while it handled an event (the panic payload
/// the runtime catches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFailure(pub String);

fn describe(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => "out of fuel (wasm_fuel_per_event)".into(),
        Some(Trap::StackOverflow) => "wasm stack overflow (wasm_max_stack)".into(),
        Some(trap) => format!("trap: {trap}"),
        None => err.to_string(),
    }
}

/// A service compiled to WebAssembly, running as a [`Service`].
///
/// Between events the instance's state is kept twice: in the live instance
/// and as the last good [`Image`] (copied after every event that returned
/// normally). A failed event is rolled back from the image. That copy — a
/// memcpy of linear memory per event, about 30 µs per MiB — is this first
/// cut's price for exact rollback; a guest with a large heap pays in
/// proportion (a copy-on-write rollback is future work, docs).
pub struct WasmService {
    module: Arc<LoadedModule>,
    live: Live,
    good: Image,
    /// Guest failures so far (local diagnostics; deterministic anyway).
    failures: u64,
}

impl WasmService {
    /// A fresh instance of `module`.
    pub fn new(module: Arc<LoadedModule>) -> Result<WasmService, WasmError> {
        let mut live = Live::new(&module)?;
        let mut good = Image::default();
        live.capture(&mut good);
        Ok(WasmService {
            module,
            live,
            good,
            failures: 0,
        })
    }

    /// A fresh instance of a module in the [`registry`].
    pub fn from_registry(id: &ModuleId) -> Result<WasmService, WasmError> {
        let module = registry::lookup(id).ok_or_else(|| {
            WasmError::Instantiate(format!("wasm module {} is not loaded", id.short()))
        })?;
        WasmService::new(module)
    }

    /// The module it runs.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    /// How many events trapped (and were rolled back) in this instance.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Restores a snapshot into an instance of `module` (which must be the
    /// one the snapshot is of).
    pub fn restore_with(module: Arc<LoadedModule>, bytes: &[u8]) -> Result<WasmService, SdkError> {
        let (id, image) = Image::decode(bytes).map_err(|e| SdkError::Snapshot(e.to_string()))?;
        if id != module.id().0 {
            return Err(SdkError::Snapshot(format!(
                "the snapshot is of wasm module {} but this node runs {} (module bytes and wasm_* settings must be the same on every replica)",
                ModuleId(id).short(),
                module.id().short()
            )));
        }
        let live =
            Live::from_image(&module, &image).map_err(|e| SdkError::Snapshot(e.to_string()))?;
        Ok(WasmService {
            module,
            live,
            good: image,
            failures: 0,
        })
    }
}

impl Service for WasmService {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        // Lend the context to the store for the call (host functions record
        // into it), leaving a stand-in, and take it back after.
        let stand_in = Context::new(ctx.index(), ctx.now(), Rng::from_seed(0), 0);
        let real = std::mem::replace(ctx, stand_in);
        self.live.store.data_mut().ctx = Some(real);
        let result = self.live.deliver(&event, self.module.config.fuel_per_event);
        if let Some(real) = self.live.store.data_mut().ctx.take() {
            *ctx = real;
        }
        match result {
            Ok(()) => self.live.capture(&mut self.good),
            Err(err) => {
                self.failures += 1;
                let failure = GuestFailure(describe(&err));
                tracing::warn!(
                    module = %self.module.id().short(),
                    conn = ?event.conn(),
                    index = ctx.index(),
                    "wasm guest failed: {}; event rolled back, its connection reset",
                    failure.0
                );
                match Live::from_image(&self.module, &self.good) {
                    Ok(live) => self.live = live,
                    // Cannot happen short of the process running out of
                    // address space: the same image instantiated before.
                    Err(err) => tracing::error!("wasm rollback failed: {err}"),
                }
                // The runtime contains this like a native service's panic:
                // the event's actions are discarded, its connection is
                // reset and the guest hears `closed`. `resume_unwind` skips
                // the panic hook: nothing is printed, it is not a bug here.
                std::panic::resume_unwind(Box::new(failure));
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.good.encode(&self.module.id().0)
    }

    fn restore(bytes: &[u8]) -> Result<Self, SdkError>
    where
        Self: Sized,
    {
        let (id, _) = Image::decode(bytes).map_err(|e| SdkError::Snapshot(e.to_string()))?;
        let module = registry::lookup(&ModuleId(id)).ok_or_else(|| {
            SdkError::Snapshot(format!(
                "the snapshot is of wasm module {}, which this node has not loaded (module bytes and wasm_* settings must be the same on every replica)",
                ModuleId(id).short()
            ))
        })?;
        WasmService::restore_with(module, bytes)
    }

    fn state_hash(&self) -> Option<u64> {
        Some(self.good.state_hash(&self.module.id().0))
    }

    fn memory_bytes(&self) -> u64 {
        self.good.memory.len() as u64
    }
}
