//! `new --adapter-arena`: give the WASI preview-1 adapter its memory from an
//! arena the guest reserved in its static data, instead of `memory.grow`.
//!
//! Why: the adapter allocates its state (and its stack) on its first call,
//! which for Go is inside the Go runtime's start, when Go's `cabi_realloc`
//! cannot run yet; `--realloc-via-memory-grow` then takes a page with
//! `memory.grow`, but Go's allocator assumes it alone grows memory and
//! hands that page out once the heap reaches it, so the adapter's state is
//! overwritten (a trap in the adapter after a few hundred calls).
//!
//! The guest declares, in initialized data, the 16-byte marker
//! `wasmgate-adapter`, a little-endian u32 size, then that many bytes. This
//! pass finds the marker in the module's data segments and adds
//! `cabi_realloc_adapter`, a bump allocator over those bytes, which
//! wit-component gives the adapter in place of `cabi_realloc`.

use anyhow::{Context, Result, bail};
use wasm_encoder::reencode::{Reencode, utils};
use wasm_encoder::{BlockType, Function, Instruction as I, ValType};
use wasmparser::{Operator, Parser, Payload};

/// The marker that precedes the arena in the guest's data.
pub const MARKER: &[u8; 16] = b"wasmgate-adapter";

/// Where the arena is: [start, end). The size after the marker is read from
/// the memory image the data segments make (the linker may split a segment
/// at zero bytes; bytes no segment covers are zero).
fn find_arena(module: &[u8]) -> Result<(u32, u32)> {
    let mut segments = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::DataSection(reader) = payload? {
            for data in reader {
                let data = data?;
                let wasmparser::DataKind::Active { offset_expr, .. } = data.kind else {
                    continue;
                };
                if let Some(Ok(Operator::I32Const { value })) =
                    offset_expr.get_operators_reader().into_iter().next()
                {
                    segments.push((value as u32, data.data));
                }
            }
        }
    }
    let markers: Vec<u32> = segments
        .iter()
        .flat_map(|(base, bytes)| {
            memchr_all(bytes, MARKER)
                .into_iter()
                .map(move |at| base + at as u32)
        })
        .collect();
    let marker = match markers.as_slice() {
        [one] => *one,
        [] => bail!(
            "no `wasmgate-adapter` arena in the module's data (see guests/go/wasmgate/adapter.go)"
        ),
        _ => bail!("more than one `wasmgate-adapter` marker in the module's data"),
    };
    let byte = |addr: u32| {
        segments
            .iter()
            .find(|(base, bytes)| addr >= *base && addr < base + bytes.len() as u32)
            .map_or(0, |(base, bytes)| bytes[(addr - base) as usize])
    };
    let size = u32::from_le_bytes([
        byte(marker + 16),
        byte(marker + 17),
        byte(marker + 18),
        byte(marker + 19),
    ]);
    if size == 0 {
        bail!("the arena after the `wasmgate-adapter` marker has size 0");
    }
    let start = marker + 20;
    Ok((
        start,
        start
            .checked_add(size)
            .context("the arena ends past 4 GiB")?,
    ))
}

fn memchr_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Counts the re-encoder needs: imported and defined functions and globals, types.
#[derive(Default)]
struct Counts {
    imported_funcs: u32,
    imported_globals: u32,
    defined_funcs: u32,
    types: u32,
}

struct AddRealloc {
    counts: Counts,
    start: u32,
    end: u32,
    /// Index of the bump pointer global, once the global section is written.
    global: u32,
}

impl AddRealloc {
    fn realloc_type(&self) -> u32 {
        self.counts.types
    }
    fn func_index(&self) -> u32 {
        self.counts.imported_funcs + self.counts.defined_funcs
    }
}

impl Reencode for AddRealloc {
    type Error = std::convert::Infallible;

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        utils::parse_type_section(self, types, section)?;
        types.ty().function([ValType::I32; 4], [ValType::I32]);
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        utils::parse_function_section(self, functions, section)?;
        functions.function(self.realloc_type());
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        utils::parse_global_section(self, globals, section)?;
        self.global = self.counts.imported_globals + globals.len();
        globals.global(
            wasm_encoder::GlobalType {
                val_type: ValType::I32,
                mutable: true,
                shared: false,
            },
            &wasm_encoder::ConstExpr::i32_const(self.start as i32),
        );
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        utils::parse_export_section(self, exports, section)?;
        exports.export(
            "cabi_realloc_adapter",
            wasm_encoder::ExportKind::Func,
            self.func_index(),
        );
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        utils::parse_code_section(self, code, section)?;
        code.function(&self.realloc());
        Ok(())
    }
}

impl AddRealloc {
    /// (old_ptr, old_size, align, new_size) -> ptr: bump allocation in
    /// [start, end), copying the old bytes on a grow; a trap when it is full.
    fn realloc(&self) -> Function {
        let (old, old_size, align, new_size, ptr) = (0, 1, 2, 3, 4);
        let mut f = Function::new([(1, ValType::I32)]);
        for i in [
            // new_size == 0: any aligned non-null pointer.
            I::LocalGet(new_size),
            I::I32Eqz,
            I::If(BlockType::Empty),
            I::LocalGet(align),
            I::Return,
            I::End,
            // ptr = (next + align - 1) & -align
            I::GlobalGet(self.global),
            I::LocalGet(align),
            I::I32Add,
            I::I32Const(1),
            I::I32Sub,
            I::I32Const(0),
            I::LocalGet(align),
            I::I32Sub,
            I::I32And,
            I::LocalTee(ptr),
            I::LocalGet(new_size),
            I::I32Add,
            I::GlobalSet(self.global),
            I::GlobalGet(self.global),
            I::I32Const(self.end as i32),
            I::I32GtU,
            I::If(BlockType::Empty),
            I::Unreachable,
            I::End,
            // A grow copies the old bytes (the adapter only ever allocates anew).
            I::LocalGet(old),
            I::If(BlockType::Empty),
            I::LocalGet(ptr),
            I::LocalGet(old),
            I::LocalGet(old_size),
            I::LocalGet(new_size),
            I::LocalGet(old_size),
            I::LocalGet(new_size),
            I::I32LtU,
            I::Select,
            I::MemoryCopy {
                src_mem: 0,
                dst_mem: 0,
            },
            I::End,
            I::LocalGet(ptr),
            I::End,
        ] {
            f.instruction(&i);
        }
        f
    }
}

/// The module with `cabi_realloc_adapter` added.
pub fn add_adapter_realloc(module: &[u8]) -> Result<Vec<u8>> {
    let (start, end) = find_arena(module)?;
    let mut counts = Counts::default();
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import?.ty {
                        wasmparser::TypeRef::Func(_) => counts.imported_funcs += 1,
                        wasmparser::TypeRef::Global(_) => counts.imported_globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    counts.types += group?.types().len() as u32;
                }
            }
            Payload::FunctionSection(reader) => counts.defined_funcs = reader.count(),
            Payload::ExportSection(reader) => {
                for export in reader {
                    if export?.name == "cabi_realloc_adapter" {
                        bail!("the module already exports cabi_realloc_adapter");
                    }
                }
            }
            _ => {}
        }
    }
    let mut sections = [false; 4];
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::TypeSection(_) => sections[0] = true,
            Payload::FunctionSection(_) => sections[1] = true,
            Payload::GlobalSection(_) => sections[2] = true,
            Payload::ExportSection(_) => sections[3] = true,
            _ => {}
        }
    }
    if sections.contains(&false) {
        bail!("the module lacks a type, function, global or export section");
    }
    let mut reencoder = AddRealloc {
        counts,
        start,
        end,
        global: 0,
    };
    let mut out = wasm_encoder::Module::new();
    reencoder
        .parse_core_module(&mut out, Parser::new(0), module)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(out.finish())
}
