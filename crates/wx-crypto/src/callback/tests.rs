//! Tencent's official WXBizMsgCrypt vectors (../shared/domain/wecom.md §4) and tampering.

use super::*;

const A_TOKEN: &str = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo";
const A_KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";
const A_RECEIVE_ID: &str = "ww1436e0e65a779aee";
const B_TOKEN: &str = "QDG6eK";
const B_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const B_RECEIVE_ID: &str = "wx5823bf96d3bd56c7";

const A2_ENCRYPT: &str = "Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGzBhzTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3JWcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuPDGOCI8jmnKiypE+";
const A2_PLAIN: &str = "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName><CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>";
const B1_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

fn a() -> CallbackCrypt {
    CallbackCrypt::new(A_TOKEN, A_KEY, A_RECEIVE_ID).expect("vector A key")
}

fn b() -> CallbackCrypt {
    CallbackCrypt::new(B_TOKEN, B_KEY, B_RECEIVE_ID).expect("vector B key")
}

/// The pad length of a vector, read by decrypting without unpadding.
fn pad_len(crypt: &CallbackCrypt, encrypt: &str) -> u8 {
    let mut buf = BASE64.decode(encrypt).expect("base64");
    let plain = Aes256CbcDec::new(&crypt.key.into(), crypt.key[..16].into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .expect("decrypt");
    *plain.last().expect("non-empty")
}

#[test]
fn a1_verify_url() {
    let echo = a()
        .verify_url(
            "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb",
            "1476416373",
            "47744683",
            "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==",
        )
        .expect("A1");
    assert_eq!(echo, b"1288432023552776189");
}

#[test]
fn a2_message_with_a_32_byte_pad_block() {
    let envelope = Envelope {
        to_user_name: Some(A_RECEIVE_ID.into()),
        encrypt: A2_ENCRYPT.into(),
        agent_id: Some("1000002".into()),
    };
    let msg = a()
        .decrypt_message(
            "0c3914025cb4b4d68103f6bfc8db550f79dcf48e",
            "1476422779",
            "1597212914",
            &envelope,
        )
        .expect("A2");
    assert_eq!(String::from_utf8(msg).expect("utf-8"), A2_PLAIN);
    // 22 bytes of padding are only valid with the 32-byte block (16 would allow at most 16).
    assert_eq!(pad_len(&a(), A2_ENCRYPT), 22);
}

#[test]
fn b1_message() {
    let crypt = b();
    crypt
        .verify_signature(
            "477715d11cdb4164915debcba66cb864d751f3e6",
            "1409659813",
            "1372623149",
            B1_ENCRYPT,
        )
        .expect("B1 signature");
    let msg = String::from_utf8(crypt.decrypt(B1_ENCRYPT).expect("B1")).expect("utf-8");
    assert!(msg.starts_with("<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"));
    assert!(msg.ends_with("</xml>"), "{msg}");
    assert!(
        msg.contains("<Content><![CDATA[hello]]></Content>"),
        "{msg}"
    );
    assert_eq!(pad_len(&crypt, B1_ENCRYPT), 30);
}

#[test]
fn b2_verify_url() {
    let echo = b()
        .verify_url(
            "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
            "1409659589",
            "263014780",
            "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
        )
        .expect("B2");
    assert_eq!(echo, b"1616140317555161061");
}

/// Flips one byte of the decoded ciphertext at `index` and re-encodes it.
fn flip(encrypt: &str, index: usize) -> String {
    let mut bytes = BASE64.decode(encrypt).expect("base64");
    bytes[index] ^= 0x01;
    BASE64.encode(bytes)
}

#[test]
fn tampered_inputs_give_their_specific_errors() {
    let crypt = a();
    let (ts, nonce) = ("1476422779", "1597212914");
    let good_sig = "0c3914025cb4b4d68103f6bfc8db550f79dcf48e";

    // Signature: one flipped character.
    let bad_sig = format!("1{}", &good_sig[1..]);
    let err = crypt
        .verify_signature(&bad_sig, ts, nonce, A2_ENCRYPT)
        .expect_err("bad signature");
    assert_eq!(
        (err.clone(), err.code()),
        (CallbackError::BadSignature, -40001)
    );
    // The signature also covers the ciphertext: a changed ciphertext fails it first.
    let tampered = flip(A2_ENCRYPT, 0);
    assert_eq!(
        crypt.verify_signature(good_sig, ts, nonce, &tampered),
        Err(CallbackError::BadSignature)
    );

    // Ciphertext (re-signed, as if the token had leaked): flipping byte 0 of block 1 flips byte
    // 0 of plaintext block 2, the top byte of the length field.
    let err = crypt.decrypt(&tampered).expect_err("bad length");
    assert_eq!(
        (err.clone(), err.code()),
        (CallbackError::BadLength, -40008)
    );

    // Padding: the last byte of the second-to-last block flips the last plaintext byte.
    let n = BASE64.decode(A2_ENCRYPT).expect("base64").len();
    let err = crypt
        .decrypt(&flip(A2_ENCRYPT, n - 17))
        .expect_err("bad padding");
    assert_eq!(
        (err.clone(), err.code()),
        (CallbackError::BadPadding, -40007)
    );

    // Receiveid: a message for another corp.
    let other = CallbackCrypt::new(A_TOKEN, A_KEY, "ww0000000000000000").expect("key");
    let err = crypt
        .decrypt(&other.encrypt(b"<xml/>"))
        .expect_err("receiveid");
    assert_eq!(
        (err.clone(), err.code()),
        (CallbackError::ReceiveIdMismatch, -40005)
    );

    // Base64 and length.
    assert_eq!(
        crypt.decrypt("not base64!").map_err(|e| e.code()),
        Err(-40010)
    );
    assert_eq!(
        crypt.decrypt(&BASE64.encode([0u8; 15])),
        Err(CallbackError::BadCiphertextLength(15))
    );
}

#[test]
fn bad_aes_keys_are_rejected() {
    for key in [
        "short",
        &format!("{A_KEY}A"),
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
    ] {
        assert_eq!(
            CallbackCrypt::new(A_TOKEN, key, A_RECEIVE_ID).map(|_| ()),
            Err(CallbackError::BadAesKey),
            "{key}"
        );
    }
    assert_eq!(CallbackError::BadAesKey.code(), -40004);
}

#[test]
fn encrypt_then_decrypt_round_trips_and_pads_to_32() {
    let crypt = b();
    for len in [0usize, 1, 9, 10, 11, 31, 32, 33, 1000] {
        let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let encrypt = crypt.encrypt_with_random(&msg, [7; 16]);
        let cipher_len = BASE64.decode(&encrypt).expect("b64").len();
        assert_eq!(cipher_len % PAD_BLOCK, 0, "len {len}");
        assert_eq!(crypt.decrypt(&encrypt).expect("round trip"), msg);
        let sig = crypt.sign("1", "2", &encrypt);
        let envelope = Envelope::from_xml(
            format!("<xml><ToUserName><![CDATA[x]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>").as_bytes(),
        )
        .expect("xml");
        assert_eq!(
            crypt
                .decrypt_message(&sig, "1", "2", &envelope)
                .expect("msg"),
            msg
        );
    }
    // An empty configured receiveid accepts any.
    let any = CallbackCrypt::new(B_TOKEN, B_KEY, "").expect("key");
    assert_eq!(any.decrypt(&b().encrypt(b"hi")).expect("any"), b"hi");
}

#[test]
fn the_reply_envelope_verifies() {
    let crypt = a();
    let xml = crypt.encrypt_reply_xml("ok".as_bytes(), "1700000000", "nonce1");
    let envelope = Envelope::from_xml(xml.as_bytes()).expect("reply xml");
    let sig = xml
        .split("<MsgSignature><![CDATA[")
        .nth(1)
        .and_then(|s| s.split("]]>").next())
        .expect("signature");
    assert_eq!(
        crypt
            .decrypt_message(sig, "1700000000", "nonce1", &envelope)
            .expect("reply"),
        b"ok"
    );
}

#[test]
fn envelopes_parse_from_xml_and_json_and_reject_garbage() {
    let xml = b"<xml><ToUserName><![CDATA[ww1]]></ToUserName><Encrypt><![CDATA[abc=]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>";
    let e = Envelope::from_xml(xml).expect("xml");
    assert_eq!(
        (
            e.to_user_name.as_deref(),
            e.encrypt.as_str(),
            e.agent_id.as_deref()
        ),
        (Some("ww1"), "abc=", Some("1000002"))
    );
    let json = br#"{"tousername":"ww1","encrypt":"abc=","agentid":1000002}"#;
    assert_eq!(Envelope::from_json(json).expect("json"), e);
    for bad in [
        &b"<xml><ToUserName>x</ToUserName></xml>"[..],
        b"<xml><Encrypt>abc",
        b"<other><Encrypt>abc</Encrypt></other>",
        b"not xml at all",
        b"",
    ] {
        assert_eq!(
            Envelope::from_xml(bad),
            Err(CallbackError::BadXml),
            "{bad:?}"
        );
    }
    for bad in [&br#"{"tousername":"x"}"#[..], b"{", br#"{"encrypt":""}"#] {
        assert_eq!(Envelope::from_json(bad).map_err(|e| e.code()), Err(-40012));
    }
}

#[test]
fn strict_pkcs7_unpadding() {
    assert_eq!(unpad(&[1, 2, 3, 2, 2]), Ok(&[1, 2, 3][..]));
    assert_eq!(unpad(&[1, 2, 3, 0]), Err(CallbackError::BadPadding));
    assert_eq!(unpad(&[1, 2, 3, 1, 2]), Err(CallbackError::BadPadding));
    assert_eq!(unpad(&[33; 64]), Err(CallbackError::BadPadding));
    assert_eq!(unpad(&[32; 32]), Ok(&[][..]));
    assert_eq!(unpad(&[]), Err(CallbackError::BadPadding));
}
