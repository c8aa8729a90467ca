//! A stand-in for Tencent's closed `libWeWorkFinanceSdk_C.so`, exporting the same C symbols
//! (from the official header `WeWorkFinanceSdk_C.h`) so wxstream's FFI layer is tested against a
//! real shared library loaded by path. It is NOT the vendor SDK:
//!
//! - `GetChatData` and `GetMediaData` call the wxstream simulator over HTTP. Its base URL is the
//!   `proxy` argument when given (the vendor SDK sends its requests through that proxy), else
//!   the `WECOM_SIM_URL` environment variable, else `http://127.0.0.1:8480`.
//! - `DecryptData` is the simulator's documented stand-in scheme (`wx_crypto::SimulatorCipher`),
//!   not WeCom's undocumented algorithm.
//!
//! Return codes follow the vendor's: 0 ok, 10000 bad parameter, 10001 network, 10002 parse,
//! 10005 bad file id, 10006 decrypt failed. As with the vendor SDK, a GetChatData reply that
//! carries a service error is returned with code 0 and `errcode` in the JSON.
//!
//! Memory: every buffer this library hands out is allocated here and freed by `FreeSlice` /
//! `FreeMediaData`, never by the caller's allocator.

// This crate is an FFI boundary: unsafe code is its purpose, confined to pointer handling.
#![allow(unsafe_code)]
#![allow(non_snake_case)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::ptr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use wx_crypto::{ArchiveCipher, SimulatorCipher};

const OK: c_int = 0;
const BAD_PARAMETER: c_int = 10000;
const NETWORK: c_int = 10001;
const PARSE: c_int = 10002;
const BAD_FILEID: c_int = 10005;
const DECRYPT_FAILED: c_int = 10006;

/// `WeWorkFinanceSdk_t`: the handle `NewSdk` returns.
pub struct Sdk {
    corpid: String,
    secret: String,
}

impl std::fmt::Debug for Sdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sdk")
            .field("corpid", &self.corpid)
            .field("secret", &"***")
            .finish()
    }
}

/// `Slice_t`.
#[derive(Debug)]
#[repr(C)]
pub struct Slice {
    buf: *mut c_char,
    len: c_int,
}

/// `MediaData_t`.
#[derive(Debug)]
#[repr(C)]
pub struct MediaData {
    outindexbuf: *mut c_char,
    out_len: c_int,
    data: *mut c_char,
    data_len: c_int,
    is_finish: c_int,
}

/// Hands `bytes` out as a NUL-terminated buffer owned by this library.
fn into_raw(bytes: Vec<u8>) -> (*mut c_char, c_int) {
    let len = c_int::try_from(bytes.len()).unwrap_or(c_int::MAX);
    let mut boxed = bytes;
    boxed.push(0);
    let raw = Box::into_raw(boxed.into_boxed_slice());
    (raw.cast::<c_char>(), len)
}

/// Frees a buffer from `into_raw`.
///
/// # Safety
/// `buf` and `len` must come from one `into_raw` call, freed once.
unsafe fn free_raw(buf: *mut c_char, len: c_int) {
    if buf.is_null() {
        return;
    }
    let total = usize::try_from(len).unwrap_or(0) + 1;
    // SAFETY: `into_raw` boxed exactly `len + 1` bytes at `buf`.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(buf.cast::<u8>(), total)) });
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .ok()
        .map(str::to_string)
}

fn base_url(proxy: Option<String>) -> String {
    proxy
        .filter(|p| !p.is_empty())
        .or_else(|| std::env::var("WECOM_SIM_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8480".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn post(url: &str, body: serde_json::Value, timeout: c_int) -> Result<serde_json::Value, c_int> {
    let timeout = std::time::Duration::from_secs(u64::try_from(timeout.max(1)).unwrap_or(5));
    let reply = ureq::post(url)
        .timeout(timeout)
        .send_json(body)
        .map_err(|_| NETWORK)?;
    reply.into_json().map_err(|_| PARSE)
}

#[unsafe(no_mangle)]
pub extern "C" fn NewSdk() -> *mut Sdk {
    Box::into_raw(Box::new(Sdk {
        corpid: String::new(),
        secret: String::new(),
    }))
}

/// # Safety
/// `sdk` comes from `NewSdk`; the strings are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn Init(
    sdk: *mut Sdk,
    corpid: *const c_char,
    secret: *const c_char,
) -> c_int {
    // SAFETY: per the contract above.
    let (Some(sdk), Some(corpid), Some(secret)) =
        (unsafe { sdk.as_mut() }, unsafe { text(corpid) }, unsafe {
            text(secret)
        })
    else {
        return BAD_PARAMETER;
    };
    sdk.corpid = corpid;
    sdk.secret = secret;
    OK
}

/// # Safety
/// `sdk` comes from `NewSdk` and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn DestroySdk(sdk: *mut Sdk) {
    if !sdk.is_null() {
        // SAFETY: allocated by NewSdk.
        drop(unsafe { Box::from_raw(sdk) });
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn NewSlice() -> *mut Slice {
    Box::into_raw(Box::new(Slice {
        buf: ptr::null_mut(),
        len: 0,
    }))
}

/// # Safety
/// `slice` comes from `NewSlice` and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FreeSlice(slice: *mut Slice) {
    if slice.is_null() {
        return;
    }
    // SAFETY: allocated by NewSlice; its buffer by into_raw.
    let slice = unsafe { Box::from_raw(slice) };
    unsafe { free_raw(slice.buf, slice.len) };
}

/// # Safety
/// `slice` comes from `NewSlice`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetContentFromSlice(slice: *mut Slice) -> *mut c_char {
    // SAFETY: per the contract above.
    unsafe { slice.as_ref() }.map_or(ptr::null_mut(), |s| s.buf)
}

/// # Safety
/// `slice` comes from `NewSlice`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetSliceLen(slice: *mut Slice) -> c_int {
    // SAFETY: per the contract above.
    unsafe { slice.as_ref() }.map_or(0, |s| s.len)
}

/// Replaces a slice's content.
///
/// # Safety
/// `slice` comes from `NewSlice`.
unsafe fn fill(slice: *mut Slice, bytes: Vec<u8>) -> c_int {
    // SAFETY: per the contract above.
    let Some(slice) = (unsafe { slice.as_mut() }) else {
        return BAD_PARAMETER;
    };
    unsafe { free_raw(slice.buf, slice.len) };
    (slice.buf, slice.len) = into_raw(bytes);
    OK
}

/// # Safety
/// `sdk` comes from `NewSdk` (and `Init`), `chat_datas` from `NewSlice`; strings are
/// NUL-terminated or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetChatData(
    sdk: *mut Sdk,
    seq: c_ulonglong,
    limit: c_uint,
    proxy: *const c_char,
    _passwd: *const c_char,
    timeout: c_int,
    chat_datas: *mut Slice,
) -> c_int {
    // SAFETY: per the contract above.
    let Some(sdk) = (unsafe { sdk.as_ref() }) else {
        return BAD_PARAMETER;
    };
    if limit == 0 || limit > 1000 {
        return BAD_PARAMETER;
    }
    let url = format!(
        "{}/cgi-bin/finance/getchatdata",
        base_url(unsafe { text(proxy) })
    );
    let body = serde_json::json!({
        "corpid": sdk.corpid, "secret": sdk.secret, "seq": seq, "limit": limit
    });
    match post(&url, body, timeout) {
        Ok(reply) => unsafe { fill(chat_datas, reply.to_string().into_bytes()) },
        Err(code) => code,
    }
}

/// # Safety
/// The strings are NUL-terminated; `msg` comes from `NewSlice`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn DecryptData(
    encrypt_key: *const c_char,
    encrypt_msg: *const c_char,
    msg: *mut Slice,
) -> c_int {
    // SAFETY: per the contract above.
    let (Some(key), Some(encrypted)) = (unsafe { text(encrypt_key) }, unsafe { text(encrypt_msg) })
    else {
        return BAD_PARAMETER;
    };
    match SimulatorCipher.decrypt(key.as_bytes(), &encrypted) {
        Ok(plain) => unsafe { fill(msg, plain) },
        Err(_) => DECRYPT_FAILED,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn NewMediaData() -> *mut MediaData {
    Box::into_raw(Box::new(MediaData {
        outindexbuf: ptr::null_mut(),
        out_len: 0,
        data: ptr::null_mut(),
        data_len: 0,
        is_finish: 0,
    }))
}

/// # Safety
/// `media` comes from `NewMediaData` and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn FreeMediaData(media: *mut MediaData) {
    if media.is_null() {
        return;
    }
    // SAFETY: allocated by NewMediaData; its buffers by into_raw.
    let media = unsafe { Box::from_raw(media) };
    unsafe {
        free_raw(media.outindexbuf, media.out_len);
        free_raw(media.data, media.data_len);
    }
}

/// # Safety
/// `sdk` from `NewSdk`, `media` from `NewMediaData`; strings NUL-terminated or null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetMediaData(
    sdk: *mut Sdk,
    indexbuf: *const c_char,
    sdk_fileid: *const c_char,
    proxy: *const c_char,
    _passwd: *const c_char,
    timeout: c_int,
    media: *mut MediaData,
) -> c_int {
    // SAFETY: per the contract above.
    let (Some(sdk), Some(fileid), Some(media)) = (
        unsafe { sdk.as_ref() },
        unsafe { text(sdk_fileid) },
        unsafe { media.as_mut() },
    ) else {
        return BAD_PARAMETER;
    };
    let url = format!(
        "{}/cgi-bin/finance/getmediadata",
        base_url(unsafe { text(proxy) })
    );
    let body = serde_json::json!({
        "corpid": sdk.corpid, "secret": sdk.secret, "sdkfileid": fileid,
        "indexbuf": unsafe { text(indexbuf) }.unwrap_or_default(),
    });
    let reply = match post(&url, body, timeout) {
        Ok(reply) => reply,
        Err(code) => return code,
    };
    match reply["errcode"].as_i64() {
        Some(0) => {}
        Some(10005) => return BAD_FILEID,
        Some(code) => return c_int::try_from(code).unwrap_or(PARSE),
        None => return PARSE,
    }
    let Some(data) = reply["data"].as_str().and_then(|d| BASE64.decode(d).ok()) else {
        return PARSE;
    };
    let index = reply["outindexbuf"]
        .as_str()
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    unsafe {
        free_raw(media.outindexbuf, media.out_len);
        free_raw(media.data, media.data_len);
    }
    (media.outindexbuf, media.out_len) = into_raw(index);
    (media.data, media.data_len) = into_raw(data);
    media.is_finish = c_int::from(reply["is_finish"].as_i64() == Some(1));
    OK
}

/// # Safety
/// `media` comes from `NewMediaData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetOutIndexBuf(media: *mut MediaData) -> *mut c_char {
    unsafe { media.as_ref() }.map_or(ptr::null_mut(), |m| m.outindexbuf)
}

/// # Safety
/// `media` comes from `NewMediaData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetData(media: *mut MediaData) -> *mut c_char {
    unsafe { media.as_ref() }.map_or(ptr::null_mut(), |m| m.data)
}

/// # Safety
/// `media` comes from `NewMediaData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetIndexLen(media: *mut MediaData) -> c_int {
    unsafe { media.as_ref() }.map_or(0, |m| m.out_len)
}

/// # Safety
/// `media` comes from `NewMediaData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetDataLen(media: *mut MediaData) -> c_int {
    unsafe { media.as_ref() }.map_or(0, |m| m.data_len)
}

/// # Safety
/// `media` comes from `NewMediaData`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn IsMediaDataFinish(media: *mut MediaData) -> c_int {
    unsafe { media.as_ref() }.map_or(0, |m| m.is_finish)
}
