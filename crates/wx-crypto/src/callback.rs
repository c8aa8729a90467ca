//! WXBizMsgCrypt, as specified by Tencent's official samples (see ../shared/domain/wecom.md §4):
//!
//! - AES key = base64decode(EncodingAESKey + "="), 32 bytes; AES-256-CBC with IV = key[0..16];
//! - PKCS#7 padding to a multiple of **32** bytes (not the AES block size);
//! - plaintext = 16 random bytes ‖ 4-byte big-endian length ‖ msg ‖ receiveid;
//! - msg_signature = lowercase hex SHA-1 of token, timestamp, nonce and encrypt, sorted
//!   lexicographically and concatenated.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;

/// EncodingAESKey + "=" is not canonical base64 (its last character carries trailing bits);
/// Tencent's own decoders ignore them, so this one does too. Ciphertexts use strict base64.
const KEY_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// WXBizMsgCrypt pads to multiples of 32 bytes.
const PAD_BLOCK: usize = 32;
const RANDOM_LEN: usize = 16;
const LENGTH_LEN: usize = 4;

/// Why a callback was rejected. Each carries the WeCom library's error code ([`Self::code`]).
/// Messages never contain the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("msg_signature does not match")]
    BadSignature,
    #[error("the XML envelope is malformed or has no Encrypt element")]
    BadXml,
    #[error("the JSON envelope is malformed or has no encrypt field")]
    BadJson,
    #[error("EncodingAESKey must be 43 base64 characters decoding to 32 bytes")]
    BadAesKey,
    #[error("the receiveid inside the message does not match the configured one")]
    ReceiveIdMismatch,
    #[error("ciphertext is not valid base64")]
    BadBase64,
    #[error("ciphertext length {0} is not a positive multiple of the AES block")]
    BadCiphertextLength(usize),
    #[error("PKCS#7 padding is invalid (32-byte block)")]
    BadPadding,
    #[error("the message length field does not fit the decrypted buffer")]
    BadLength,
}

impl CallbackError {
    /// The error code of Tencent's WXBizMsgCrypt libraries.
    pub fn code(&self) -> i32 {
        match self {
            CallbackError::BadSignature => -40001,
            CallbackError::BadXml => -40002,
            CallbackError::BadAesKey => -40004,
            CallbackError::ReceiveIdMismatch => -40005,
            CallbackError::BadCiphertextLength(_) | CallbackError::BadPadding => -40007,
            CallbackError::BadLength => -40008,
            CallbackError::BadBase64 => -40010,
            CallbackError::BadJson => -40012,
        }
    }
}

/// `msg_signature`: lowercase hex SHA-1 of the four strings sorted and concatenated.
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    hex::encode(Sha1::digest(parts.concat().as_bytes()))
}

/// The fields of a POSTed callback body (XML `<xml><ToUserName/><Encrypt/><AgentID/></xml>` or
/// the JSON variant `{"tousername","encrypt","agentid"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub to_user_name: Option<String>,
    pub encrypt: String,
    pub agent_id: Option<String>,
}

impl Envelope {
    /// Parses an XML envelope.
    pub fn from_xml(body: &[u8]) -> Result<Envelope, CallbackError> {
        let mut fields = xml_fields(body)?;
        let encrypt = fields
            .remove("Encrypt")
            .filter(|e| !e.is_empty())
            .ok_or(CallbackError::BadXml)?;
        Ok(Envelope {
            to_user_name: fields.remove("ToUserName"),
            encrypt,
            agent_id: fields.remove("AgentID"),
        })
    }

    /// Parses the JSON envelope variant.
    pub fn from_json(body: &[u8]) -> Result<Envelope, CallbackError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| CallbackError::BadJson)?;
        let field = |name: &str| -> Option<String> {
            match value.get(name)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let encrypt = field("encrypt")
            .filter(|e| !e.is_empty())
            .ok_or(CallbackError::BadJson)?;
        Ok(Envelope {
            to_user_name: field("tousername"),
            encrypt,
            agent_id: field("agentid"),
        })
    }
}

/// The children of a WeCom XML document (`<xml><Name>text</Name>...</xml>`) as name -> text,
/// CDATA and escaped text alike. Deeper elements are not flattened.
pub fn xml_fields(body: &[u8]) -> Result<BTreeMap<String, String>, CallbackError> {
    use quick_xml::Reader;
    use quick_xml::events::Event;

    let mut reader = Reader::from_reader(body);
    let mut buf = Vec::new();
    let mut current: Option<String> = None;
    let mut depth = 0usize;
    let mut fields = BTreeMap::new();
    let mut push = |current: &Option<String>, text: &str| {
        if let Some(name) = current {
            fields
                .entry(name.clone())
                .or_insert_with(String::new)
                .push_str(text);
        }
    };
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                depth += 1;
                if depth == 1 && e.name().as_ref() != b"xml" {
                    return Err(CallbackError::BadXml);
                }
                current = if depth == 2 {
                    Some(
                        String::from_utf8(e.name().as_ref().to_vec())
                            .map_err(|_| CallbackError::BadXml)?,
                    )
                } else {
                    None
                };
            }
            Ok(Event::End(_)) => {
                depth = depth.checked_sub(1).ok_or(CallbackError::BadXml)?;
                current = None;
            }
            Ok(Event::Text(t)) => {
                let text = t.unescape().map_err(|_| CallbackError::BadXml)?;
                push(&current, &text);
            }
            Ok(Event::CData(t)) => {
                let text = std::str::from_utf8(&t).map_err(|_| CallbackError::BadXml)?;
                push(&current, text);
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(_) => return Err(CallbackError::BadXml),
        }
        buf.clear();
    }
    if depth != 0 {
        return Err(CallbackError::BadXml);
    }
    Ok(fields)
}

/// WXBizMsgCrypt for one token, EncodingAESKey and receiveid (corp id, suite id, app id, or
/// empty to accept any).
#[derive(Clone)]
pub struct CallbackCrypt {
    token: String,
    key: [u8; 32],
    receive_id: String,
}

impl std::fmt::Debug for CallbackCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackCrypt")
            .field("token", &"***")
            .field("key", &"***")
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl CallbackCrypt {
    /// Fails with [`CallbackError::BadAesKey`] unless `encoding_aes_key` is 43 characters of
    /// base64 decoding to 32 bytes.
    pub fn new(
        token: &str,
        encoding_aes_key: &str,
        receive_id: &str,
    ) -> Result<CallbackCrypt, CallbackError> {
        if encoding_aes_key.len() != 43 {
            return Err(CallbackError::BadAesKey);
        }
        let key = KEY_BASE64
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CallbackError::BadAesKey)?;
        let key: [u8; 32] = key.try_into().map_err(|_| CallbackError::BadAesKey)?;
        Ok(CallbackCrypt {
            token: token.to_string(),
            key,
            receive_id: receive_id.to_string(),
        })
    }

    /// The signature this token gives the parameters.
    pub fn sign(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        signature(&self.token, timestamp, nonce, encrypt)
    }

    /// Checks `msg_signature` in constant time over its length.
    pub fn verify_signature(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), CallbackError> {
        let expected = self.sign(timestamp, nonce, encrypt);
        let given = msg_signature.as_bytes();
        let same = expected.len() == given.len()
            && expected
                .as_bytes()
                .iter()
                .zip(given)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(CallbackError::BadSignature)
        }
    }

    /// URL verification (GET): checks the signature and returns the decrypted `echostr`.
    pub fn verify_url(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &str,
    ) -> Result<Vec<u8>, CallbackError> {
        self.verify_signature(msg_signature, timestamp, nonce, echostr)?;
        self.decrypt(echostr)
    }

    /// A POSTed message: checks the signature over the envelope's `Encrypt` and decrypts it.
    pub fn decrypt_message(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        envelope: &Envelope,
    ) -> Result<Vec<u8>, CallbackError> {
        self.verify_signature(msg_signature, timestamp, nonce, &envelope.encrypt)?;
        self.decrypt(&envelope.encrypt)
    }

    /// Decrypts one base64 `Encrypt` value and checks its receiveid; returns the message.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, CallbackError> {
        let mut buf = BASE64
            .decode(encrypt.trim())
            .map_err(|_| CallbackError::BadBase64)?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CallbackError::BadCiphertextLength(buf.len()));
        }
        let plain = Aes256CbcDec::new(&self.key.into(), self.key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CallbackError::BadCiphertextLength(encrypt.len()))?;
        let unpadded = unpad(plain)?;
        let (msg, receive_id) = split_plaintext(unpadded)?;
        if !self.receive_id.is_empty() && receive_id != self.receive_id.as_bytes() {
            return Err(CallbackError::ReceiveIdMismatch);
        }
        Ok(msg.to_vec())
    }

    /// Encrypts `msg` with fresh random bytes; returns the base64 `Encrypt` value.
    pub fn encrypt(&self, msg: &[u8]) -> String {
        self.encrypt_with_random(msg, rand::random())
    }

    /// Encrypts with the given 16 random bytes (deterministic, for tests and vectors).
    pub fn encrypt_with_random(&self, msg: &[u8], random: [u8; RANDOM_LEN]) -> String {
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        let mut plain = Vec::with_capacity(
            RANDOM_LEN + LENGTH_LEN + msg.len() + self.receive_id.len() + PAD_BLOCK,
        );
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(msg);
        plain.extend_from_slice(self.receive_id.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        plain.resize(plain.len() + pad, u8::try_from(pad).unwrap_or(0));
        let n = plain.len();
        let cipher = Aes256CbcEnc::new(&self.key.into(), self.key[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, n)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        BASE64.encode(cipher)
    }

    /// Encrypts and signs a reply, returning the XML envelope WeCom expects.
    pub fn encrypt_reply_xml(&self, msg: &[u8], timestamp: &str, nonce: &str) -> String {
        let encrypt = self.encrypt(msg);
        let signature = self.sign(timestamp, nonce, &encrypt);
        format!(
            "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><MsgSignature><![CDATA[{signature}]]></MsgSignature><TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        )
    }
}

/// Strict PKCS#7 with the 32-byte block: the last byte n is in 1..=32 and the last n bytes all
/// equal n.
pub(crate) fn unpad(plain: &[u8]) -> Result<&[u8], CallbackError> {
    let n = usize::from(*plain.last().ok_or(CallbackError::BadPadding)?);
    if n == 0 || n > PAD_BLOCK || n > plain.len() {
        return Err(CallbackError::BadPadding);
    }
    let (body, pad) = plain.split_at(plain.len() - n);
    if pad.iter().any(|&b| usize::from(b) != n) {
        return Err(CallbackError::BadPadding);
    }
    Ok(body)
}

/// Splits `random ‖ len ‖ msg ‖ receiveid` into (msg, receiveid).
fn split_plaintext(plain: &[u8]) -> Result<(&[u8], &[u8]), CallbackError> {
    let rest = plain.get(RANDOM_LEN..).ok_or(CallbackError::BadLength)?;
    let (len, rest) = rest
        .split_first_chunk::<LENGTH_LEN>()
        .ok_or(CallbackError::BadLength)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| CallbackError::BadLength)?;
    if len > rest.len() {
        return Err(CallbackError::BadLength);
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests;
