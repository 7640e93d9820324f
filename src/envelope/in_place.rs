//! One zstd frame compressed straight from the caller's buffer while the caller hands it over a
//! window at a time.
//!
//! zstd's streaming API copies its input into a buffer of its own and, once that buffer has
//! wrapped, matches against the older half as an external dictionary: on a mapped WAL segment
//! that path (`ZSTD_compressBlock_fast_extDict`) took 2.4 times the CPU of the one a one-shot
//! compression takes (benches/README.md). With zstd's experimental `ZSTD_c_stableInBuffer`
//! the compressor reads the caller's buffer in place, exactly as a one-shot compression does,
//! and the caller may still grow the part it offers window by window; with
//! `ZSTD_c_stableOutBuffer` it writes into the caller's output without a buffer between.
//!
//! zstd-safe refuses `StableInBuffer(true)`: its `InBuffer` borrows the input for one call
//! only, and it cannot promise the bytes stay put until the frame ends. This module keeps that
//! promise itself, by compressing a whole frame within one call that borrows the whole input,
//! so it speaks to zstd-sys (the crate zstd-safe wraps) directly.

use std::ffi::{CStr, c_int};
use std::io;
use std::ptr::NonNull;

use zstd_sys as sys;

/// `ZSTD_c_stableInBuffer` (zstd.h names the experimental parameters by number).
const STABLE_IN_BUFFER: sys::ZSTD_cParameter = sys::ZSTD_cParameter::ZSTD_c_experimentalParam9;
/// `ZSTD_c_stableOutBuffer`.
const STABLE_OUT_BUFFER: sys::ZSTD_cParameter = sys::ZSTD_cParameter::ZSTD_c_experimentalParam10;
/// `ZSTD_BLOCKSIZE_MAX`: zstd compresses in blocks of at most this many bytes.
const MAX_BLOCK_BYTES: usize = 128 << 10;

/// A zstd compression context, freed on drop.
struct Context(NonNull<sys::ZSTD_CCtx>);

impl Context {
    fn new() -> io::Result<Context> {
        // SAFETY: plain FFI; a null context means zstd could not allocate one.
        let cctx = unsafe { sys::ZSTD_createCCtx() };
        NonNull::new(cctx).map(Context).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                "zstd could not allocate a context",
            )
        })
    }

    fn set(&mut self, parameter: sys::ZSTD_cParameter, value: c_int) -> io::Result<()> {
        // SAFETY: a live context; zstd validates the parameter and its value.
        check(unsafe { sys::ZSTD_CCtx_setParameter(self.0.as_ptr(), parameter, value) }).map(drop)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx and freed once, here.
        unsafe { sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

/// zstd's result code as an error when it is one.
fn check(code: usize) -> io::Result<usize> {
    // SAFETY: plain FFI on an integer.
    if unsafe { sys::ZSTD_isError(code) } == 0 {
        return Ok(code);
    }
    // SAFETY: zstd returns a static, NUL-terminated string for every code.
    let name = unsafe { CStr::from_ptr(sys::ZSTD_getErrorName(code)) };
    Err(io::Error::other(format!(
        "zstd: {}",
        name.to_string_lossy()
    )))
}

/// Compresses one frame from a buffer read in place. It is used up by that frame: zstd keeps
/// state across a failed call that a reset does not clear (a count of input it pretended to
/// consume), and a context reused after an error could read outside the next frame's input.
pub(super) struct FrameCompressor {
    cctx: Context,
    level: i32,
}

impl FrameCompressor {
    /// A compressor at `level`, with a minimum match of `min_match` bytes when given, that
    /// records the content size in the frame.
    pub(super) fn new(level: i32, min_match: Option<u32>) -> io::Result<FrameCompressor> {
        let mut cctx = Context::new()?;
        cctx.set(sys::ZSTD_cParameter::ZSTD_c_compressionLevel, level)?;
        if let Some(min_match) = min_match {
            cctx.set(sys::ZSTD_cParameter::ZSTD_c_minMatch, min_match as c_int)?;
        }
        cctx.set(sys::ZSTD_cParameter::ZSTD_c_contentSizeFlag, 1)?;
        cctx.set(STABLE_IN_BUFFER, 1)?;
        cctx.set(STABLE_OUT_BUFFER, 1)?;
        Ok(FrameCompressor { cctx, level })
    }

    /// How far behind the input zstd has taken it may still read, in a frame of `len` bytes
    /// at this compressor's level: its match window (sized by level and pledged length),
    /// counted from the start of the block zstd compresses next, which may lie up to a block
    /// behind what it reports taken.
    fn reach(&self, len: usize) -> usize {
        // SAFETY: plain FFI on integers.
        let params = unsafe { sys::ZSTD_getCParams(self.level, len as u64, 0) };
        1usize
            .checked_shl(params.windowLog)
            .map_or(usize::MAX, |window| window.saturating_add(MAX_BLOCK_BYTES))
    }

    /// Appends one zstd frame holding `content` to `out`. zstd is offered `window` more bytes
    /// at a time and reads them where they are; after each offer `done_before(offset)` learns
    /// that zstd will not read the bytes before `offset` again: those behind its match window.
    /// The last offer ends the frame, so its last block is marked last, as in a one-shot frame.
    pub(super) fn compress(
        self,
        content: &[u8],
        window: usize,
        out: &mut Vec<u8>,
        done_before: &mut dyn FnMut(usize),
    ) -> io::Result<()> {
        let reach = self.reach(content.len());
        let cctx = self.cctx.0.as_ptr();
        // SAFETY: a live context.
        check(unsafe { sys::ZSTD_CCtx_setPledgedSrcSize(cctx, content.len() as u64) })?;

        // A stable output cannot grow, so it has room for the worst case; pages never
        // written are never touched.
        // SAFETY: plain FFI on an integer.
        let bound = unsafe { sys::ZSTD_compressBound(content.len()) };
        out.reserve(bound);
        let spare = out.spare_capacity_mut();
        let mut output = sys::ZSTD_outBuffer {
            dst: spare.as_mut_ptr().cast(),
            size: spare.len(),
            pos: 0,
        };
        // zstd's contract for a stable input: the same `src` on every call, `pos` moved only
        // by zstd, `size` only growing. `content` is borrowed for this whole function, which
        // ends the frame, so the bytes stay where zstd reads them.
        let mut input = sys::ZSTD_inBuffer {
            src: content.as_ptr().cast(),
            size: 0,
            pos: 0,
        };
        let window = window.max(1);
        while content.len() - input.size > window {
            input.size += window;
            // SAFETY: `input` and `output` describe live buffers as the contract requires.
            check(unsafe {
                sys::ZSTD_compressStream2(
                    cctx,
                    &mut output,
                    &mut input,
                    sys::ZSTD_EndDirective::ZSTD_e_continue,
                )
            })?;
            done_before(input.pos.saturating_sub(reach));
        }
        input.size = content.len();
        // SAFETY: as above; with room for the bound the frame ends in this one call.
        let left = check(unsafe {
            sys::ZSTD_compressStream2(
                cctx,
                &mut output,
                &mut input,
                sys::ZSTD_EndDirective::ZSTD_e_end,
            )
        })?;
        if left != 0 || input.pos != content.len() {
            return Err(io::Error::other(format!(
                "zstd left {left} bytes of the frame unwritten with room for {bound}"
            )));
        }
        done_before(content.len());
        let written = out.len() + output.pos;
        // SAFETY: zstd initialised the first `output.pos` bytes of the spare capacity.
        unsafe { out.set_len(written) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compressor_keeps_no_copy_of_its_input() {
        // In place zstd holds its tables and a block's sequences (570 KiB at level 1); offered
        // in windows without the stable input it would add a buffer of a match window and a
        // block (640 KiB), and its output buffer.
        let content: Vec<u8> = (0..8u32 << 20)
            .map(|i| ((i % 251) ^ (i >> 13)) as u8)
            .collect();
        let compressor = FrameCompressor::new(1, Some(5)).unwrap();
        assert_eq!(compressor.reach(content.len()), (512 + 128) << 10);
        let cctx = compressor.cctx.0;
        let mut held = Vec::new();
        let mut out = Vec::new();
        compressor
            .compress(&content, 1 << 20, &mut out, &mut |_| {
                // SAFETY: the context lives while it compresses.
                held.push(unsafe { sys::ZSTD_sizeof_CCtx(cctx.as_ptr()) })
            })
            .unwrap();
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), content);
        let most = held.iter().max().copied().unwrap_or(0);
        assert!(
            (1..1 << 20).contains(&most),
            "the context holds {most} bytes"
        );
    }
}
