//! The WeCom finance SDK, `libWeWorkFinanceSdk_C.so`, loaded at run time from a configured path
//! (it is closed, Linux-only, and not redistributable, so it is never linked at build time).
//!
//! # Layout
//! - [`FinanceSdk`]: one loaded library with one initialised handle for one corp: GetChatData,
//!   GetMediaData (one chunk, or a whole file with its MD5 checked and retried), DecryptData.
//! - [`SdkCipher`]: DecryptData as a `wx_crypto::ArchiveCipher`, the second implementation beside
//!   the simulator's stand-in scheme.
//!
//! # Thread-safety (documented choice)
//! The vendor promises none, and earlier wrappers crashed under concurrency (domain page §5.7).
//! So: one handle per corp (`Init` takes the corp), calls on a handle are serialised by a mutex,
//! and `DecryptData` (which takes no handle) is serialised process-wide. The RSA step, the
//! expensive one, runs outside the SDK on every core.
//!
//! # Invariants
//! Every slice and media buffer the SDK hands out is freed by the SDK's own `FreeSlice` /
//! `FreeMediaData`, on every path (guards). Errors carry the SDK's code, never data.

// An FFI boundary: unsafe code is confined to this crate and commented at each use.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libloading::Library;
use md5::Digest;
use wx_crypto::{ArchiveCipher, ArchiveCipherError};

/// An error of the SDK or of loading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    #[error("cannot load the WeCom SDK from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("the WeCom SDK at {path} lacks the symbol {symbol}")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    #[error("WeCom SDK error {code} ({})", describe(*code))]
    Code { code: i32 },
    #[error("an argument contains a NUL byte")]
    NulInArgument,
    #[error("media {sdkfileid}: MD5 still mismatched after {attempts} attempts")]
    Md5Mismatch { sdkfileid: String, attempts: u32 },
}

/// The SDK's error codes, as documented.
pub fn describe(code: i32) -> &'static str {
    match code {
        10000 => "bad parameter",
        10001 => "network error",
        10002 => "parse failure",
        10003 => "system failure",
        10004 => "key error",
        10005 => "bad fileid",
        10006 => "decrypt failed",
        10007 => "no private key for that version",
        10008 => "bad encrypt_key",
        10009 => "IP not allowed",
        10010 => "data expired",
        10011 => "certificate error",
        _ => "unknown",
    }
}

impl SdkError {
    /// Transient failures the caller should retry with backoff (10001-10003).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SdkError::Code {
                code: 10001..=10003
            }
        )
    }
}

type NewSdkFn = unsafe extern "C" fn() -> *mut c_void;
type InitFn = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> c_int;
type DestroySdkFn = unsafe extern "C" fn(*mut c_void);
type GetChatDataFn = unsafe extern "C" fn(
    *mut c_void,
    c_ulonglong,
    c_uint,
    *const c_char,
    *const c_char,
    c_int,
    *mut c_void,
) -> c_int;
type DecryptDataFn = unsafe extern "C" fn(*const c_char, *const c_char, *mut c_void) -> c_int;
type GetMediaDataFn = unsafe extern "C" fn(
    *mut c_void,
    *const c_char,
    *const c_char,
    *const c_char,
    *const c_char,
    c_int,
    *mut c_void,
) -> c_int;
type NewFn = unsafe extern "C" fn() -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type PtrFn = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
type LenFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The SDK's functions, copied out of the library (valid while `Library` lives).
struct Symbols {
    new_sdk: NewSdkFn,
    init: InitFn,
    destroy_sdk: DestroySdkFn,
    get_chat_data: GetChatDataFn,
    decrypt_data: DecryptDataFn,
    get_media_data: GetMediaDataFn,
    new_slice: NewFn,
    free_slice: FreeFn,
    get_content_from_slice: PtrFn,
    get_slice_len: LenFn,
    new_media_data: NewFn,
    free_media_data: FreeFn,
    get_out_index_buf: PtrFn,
    get_data: PtrFn,
    get_index_len: LenFn,
    get_data_len: LenFn,
    is_media_data_finish: LenFn,
}

/// `DecryptData` takes no handle: serialise it across every loaded SDK of the process.
static DECRYPT_LOCK: Mutex<()> = Mutex::new(());

/// A handle pointer, only touched under the mutex.
struct Handle(*mut c_void);

/// One chunk of a media file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    pub data: Vec<u8>,
    /// Pass back as `indexbuf` for the next chunk.
    pub out_index: String,
    pub is_finish: bool,
}

/// The loaded SDK with one handle initialised for one corp.
pub struct FinanceSdk {
    path: PathBuf,
    corp_id: String,
    symbols: Symbols,
    handle: Mutex<Handle>,
    // Declared last: dropped after the handle is destroyed.
    _library: Library,
}

impl std::fmt::Debug for FinanceSdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinanceSdk")
            .field("path", &self.path)
            .field("corp_id", &self.corp_id)
            .finish_non_exhaustive()
    }
}

// SAFETY: the handle is only used under `self.handle`'s mutex and DecryptData under
// DECRYPT_LOCK (see the module docs); the function pointers are plain code addresses.
unsafe impl Send for FinanceSdk {}
// SAFETY: as above; no `&self` method touches the handle without the mutex.
unsafe impl Sync for FinanceSdk {}

/// Frees a slice with the SDK's own FreeSlice when dropped.
struct SliceGuard<'a> {
    sdk: &'a Symbols,
    ptr: *mut c_void,
}

impl Drop for SliceGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from NewSlice of the same library and is freed once.
        unsafe { (self.sdk.free_slice)(self.ptr) }
    }
}

impl SliceGuard<'_> {
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the slice is live; the SDK reports its buffer and length.
        unsafe {
            let buf = (self.sdk.get_content_from_slice)(self.ptr);
            let len = usize::try_from((self.sdk.get_slice_len)(self.ptr)).unwrap_or(0);
            copy_out(buf, len)
        }
    }
}

/// Frees media data with the SDK's own FreeMediaData when dropped.
struct MediaGuard<'a> {
    sdk: &'a Symbols,
    ptr: *mut c_void,
}

impl Drop for MediaGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from NewMediaData of the same library and is freed once.
        unsafe { (self.sdk.free_media_data)(self.ptr) }
    }
}

/// Copies `len` bytes at `buf` (binary-safe: never read as a C string, so NUL bytes survive).
///
/// # Safety
/// `buf` is null or points to at least `len` readable bytes.
unsafe fn copy_out(buf: *const c_char, len: usize) -> Vec<u8> {
    if buf.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: per the contract above.
    unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec()
}

fn cstring(s: &str) -> Result<CString, SdkError> {
    CString::new(s).map_err(|_| SdkError::NulInArgument)
}

fn check(code: c_int) -> Result<(), SdkError> {
    if code == 0 {
        Ok(())
    } else {
        Err(SdkError::Code { code })
    }
}

impl FinanceSdk {
    /// Loads the library at `path`, creates a handle and `Init`s it for the corp.
    pub fn load(path: &Path, corp_id: &str, secret: &str) -> Result<FinanceSdk, SdkError> {
        // SAFETY: loading a shared library runs its initialisers; the operator configures which
        // library, and it is the vendor SDK (or the project's stand-in).
        let library = unsafe { Library::new(path) }.map_err(|e| SdkError::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        macro_rules! symbol {
            ($name:literal) => {
                // SAFETY: the type is the one of the official header for this symbol.
                *unsafe { library.get(concat!($name, "\0").as_bytes()) }.map_err(|_| {
                    SdkError::MissingSymbol {
                        path: path.to_path_buf(),
                        symbol: $name,
                    }
                })?
            };
        }
        let symbols = Symbols {
            new_sdk: symbol!("NewSdk"),
            init: symbol!("Init"),
            destroy_sdk: symbol!("DestroySdk"),
            get_chat_data: symbol!("GetChatData"),
            decrypt_data: symbol!("DecryptData"),
            get_media_data: symbol!("GetMediaData"),
            new_slice: symbol!("NewSlice"),
            free_slice: symbol!("FreeSlice"),
            get_content_from_slice: symbol!("GetContentFromSlice"),
            get_slice_len: symbol!("GetSliceLen"),
            new_media_data: symbol!("NewMediaData"),
            free_media_data: symbol!("FreeMediaData"),
            get_out_index_buf: symbol!("GetOutIndexBuf"),
            get_data: symbol!("GetData"),
            get_index_len: symbol!("GetIndexLen"),
            get_data_len: symbol!("GetDataLen"),
            is_media_data_finish: symbol!("IsMediaDataFinish"),
        };
        let (corp, secret_c) = (cstring(corp_id)?, cstring(secret)?);
        // SAFETY: NewSdk takes no arguments and returns a handle we own.
        let handle = unsafe { (symbols.new_sdk)() };
        if handle.is_null() {
            return Err(SdkError::Code { code: 10003 });
        }
        // SAFETY: a fresh handle and NUL-terminated strings that outlive the call.
        let code = unsafe { (symbols.init)(handle, corp.as_ptr(), secret_c.as_ptr()) };
        if code != 0 {
            // SAFETY: the handle is ours and not used again.
            unsafe { (symbols.destroy_sdk)(handle) };
            return Err(SdkError::Code { code });
        }
        Ok(FinanceSdk {
            path: path.to_path_buf(),
            corp_id: corp_id.to_string(),
            symbols,
            handle: Mutex::new(Handle(handle)),
            _library: library,
        })
    }

    fn new_slice(&self) -> SliceGuard<'_> {
        SliceGuard {
            sdk: &self.symbols,
            // SAFETY: NewSlice takes no arguments.
            ptr: unsafe { (self.symbols.new_slice)() },
        }
    }

    /// GetChatData: the raw JSON reply (`errcode`, `errmsg`, `chatdata`) after the exclusive
    /// cursor `seq`, at most `limit` (<= 1000) items.
    pub fn get_chat_data(
        &self,
        seq: u64,
        limit: u32,
        proxy: &str,
        passwd: &str,
        timeout_s: i32,
    ) -> Result<Vec<u8>, SdkError> {
        let (proxy, passwd) = (cstring(proxy)?, cstring(passwd)?);
        let slice = self.new_slice();
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the handle is live and held exclusively; strings and slice outlive the call.
        let code = unsafe {
            (self.symbols.get_chat_data)(
                handle.0,
                seq,
                limit,
                proxy.as_ptr(),
                passwd.as_ptr(),
                timeout_s,
                slice.ptr,
            )
        };
        drop(handle);
        check(code)?;
        Ok(slice.bytes())
    }

    /// GetMediaData: one chunk (`index` empty for the first).
    pub fn get_media_chunk(
        &self,
        sdkfileid: &str,
        index: &str,
        proxy: &str,
        passwd: &str,
        timeout_s: i32,
    ) -> Result<MediaChunk, SdkError> {
        let (file, index, proxy, passwd) = (
            cstring(sdkfileid)?,
            cstring(index)?,
            cstring(proxy)?,
            cstring(passwd)?,
        );
        let media = MediaGuard {
            sdk: &self.symbols,
            // SAFETY: NewMediaData takes no arguments.
            ptr: unsafe { (self.symbols.new_media_data)() },
        };
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: as in get_chat_data.
        let code = unsafe {
            (self.symbols.get_media_data)(
                handle.0,
                index.as_ptr(),
                file.as_ptr(),
                proxy.as_ptr(),
                passwd.as_ptr(),
                timeout_s,
                media.ptr,
            )
        };
        drop(handle);
        check(code)?;
        let s = &self.symbols;
        // SAFETY: the media data is live; lengths come from the SDK.
        unsafe {
            let data = copy_out(
                (s.get_data)(media.ptr),
                usize::try_from((s.get_data_len)(media.ptr)).unwrap_or(0),
            );
            let out_index = copy_out(
                (s.get_out_index_buf)(media.ptr),
                usize::try_from((s.get_index_len)(media.ptr)).unwrap_or(0),
            );
            Ok(MediaChunk {
                data,
                out_index: String::from_utf8_lossy(&out_index).into_owned(),
                is_finish: (s.is_media_data_finish)(media.ptr) == 1,
            })
        }
    }

    /// A whole media file: chunks until `is_finish`, then its MD5 checked against `md5sum` (when
    /// the message gave one). A mismatch re-downloads, up to `attempts` times in all.
    pub fn download_media(
        &self,
        sdkfileid: &str,
        md5sum: &str,
        proxy: &str,
        passwd: &str,
        timeout_s: i32,
        attempts: u32,
    ) -> Result<Vec<u8>, SdkError> {
        for _ in 0..attempts.max(1) {
            let mut data = Vec::new();
            let mut index = String::new();
            loop {
                let chunk = self.get_media_chunk(sdkfileid, &index, proxy, passwd, timeout_s)?;
                data.extend_from_slice(&chunk.data);
                if chunk.is_finish {
                    break;
                }
                index = chunk.out_index;
            }
            let actual = format!("{:x}", md5::Md5::digest(&data));
            if md5sum.is_empty() || actual.eq_ignore_ascii_case(md5sum) {
                return Ok(data);
            }
        }
        Err(SdkError::Md5Mismatch {
            sdkfileid: sdkfileid.to_string(),
            attempts: attempts.max(1),
        })
    }

    /// DecryptData: the message JSON from the RSA-decrypted random key and `encrypt_chat_msg`.
    pub fn decrypt_data(
        &self,
        random_key: &[u8],
        encrypt_chat_msg: &str,
    ) -> Result<Vec<u8>, SdkError> {
        let key = CString::new(random_key).map_err(|_| SdkError::NulInArgument)?;
        let msg = cstring(encrypt_chat_msg)?;
        let slice = self.new_slice();
        let _serial = DECRYPT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: NUL-terminated strings and a live slice that outlive the call.
        let code = unsafe { (self.symbols.decrypt_data)(key.as_ptr(), msg.as_ptr(), slice.ptr) };
        check(code)?;
        Ok(slice.bytes())
    }
}

impl Drop for FinanceSdk {
    fn drop(&mut self) {
        let handle = self.handle.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the handle came from NewSdk and is destroyed once, before the library unloads.
        unsafe { (self.symbols.destroy_sdk)(handle.0) };
    }
}

/// DecryptData as the archive cipher.
#[derive(Debug)]
pub struct SdkCipher<'a>(pub &'a FinanceSdk);

impl ArchiveCipher for SdkCipher<'_> {
    fn decrypt(
        &self,
        random_key: &[u8],
        encrypt_chat_msg: &str,
    ) -> Result<Vec<u8>, ArchiveCipherError> {
        self.0
            .decrypt_data(random_key, encrypt_chat_msg)
            .map_err(|e| match e {
                SdkError::Code { code } => ArchiveCipherError::Sdk(code),
                _ => ArchiveCipherError::Sdk(10000),
            })
    }
}
