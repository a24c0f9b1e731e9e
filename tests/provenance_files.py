"""Image files carrying provenance, built by the tests in the layouts real tools write.

PNG text chunks as AUTOMATIC1111, ComfyUI, NovelAI, InvokeAI and Fooocus save them; JPEGs with
EXIF (Software, UserComment as piexif encodes it) and XMP (IPTC DigitalSourceType); C2PA
manifests signed with a throw-away certificate chain (CA + ES256 end-entity, no timestamp
authority, nothing fetched).
"""

from __future__ import annotations

import datetime
import functools
import io
import json
import struct
import zlib

from PIL import Image, PngImagePlugin

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"

A1111 = (
    "a lighthouse at dusk, oil painting\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
    'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "a: 1, b: 2", Version: v1.7.0'
)
COMFY_PROMPT = json.dumps(
    {
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}},
    }
)
COMFY_WORKFLOW = json.dumps(
    {"nodes": [{"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["flux1-dev-fp8.safetensors"]}]}
)


def image(seed: int = 0, size: tuple[int, int] = (300, 260)) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BILINEAR)


def png(texts: dict[str, str] | None = None, *, itxt: dict[str, str] | None = None, seed: int = 0) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (texts or {}).items():
        info.add_text(k, v)
    for k, v in (itxt or {}).items():
        info.add_itxt(k, v, zip=True)
    buf = io.BytesIO()
    image(seed).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_text_after_idat(key: str, value: str, seed: int = 0) -> bytes:
    """A tEXt chunk between the last IDAT and IEND (legal; Pillow sees it only after a full load)."""
    data = png(seed=seed)
    body = key.encode("latin-1") + b"\x00" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


def user_comment_unicode(text: str) -> bytes:
    """EXIF UserComment as piexif (and so AUTOMATIC1111) writes it: UNICODE prefix, UTF-16 big-endian."""
    return b"UNICODE\x00" + text.encode("utf-16-be")


def jpeg(software: str | None = None, user_comment: bytes | None = None, xmp: str | None = None, seed: int = 0) -> bytes:
    exif = Image.Exif()
    if software is not None:
        exif[0x0131] = software
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = user_comment
    buf = io.BytesIO()
    kwargs: dict = {"exif": exif.tobytes()} if len(exif) or user_comment is not None else {}
    if xmp is not None:
        kwargs["xmp"] = xmp.encode()
    image(seed).save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def webp(xmp: str | None = None, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    image(seed).save(buf, format="WEBP", quality=90, **({"xmp": xmp.encode()} if xmp else {}))
    return buf.getvalue()


def xmp_source_type(uri: str, attribute: bool = True) -> str:
    """XMP naming a non-AI CreatorTool and the given IPTC DigitalSourceType, as attribute or element."""
    ns = (
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmp:CreatorTool="Adobe Photoshop 25.0"'
    )
    if attribute:
        description = f'<rdf:Description {ns} Iptc4xmpExt:DigitalSourceType="{uri}"/>'
    else:
        description = (
            f"<rdf:Description {ns}><Iptc4xmpExt:DigitalSourceType>{uri}</Iptc4xmpExt:DigitalSourceType>"
            "</rdf:Description>"
        )
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f"{description}</rdf:RDF></x:xmpmeta>"
    )


@functools.cache
def _chain() -> tuple[bytes, bytes]:
    """(PEM end-entity + CA certificates, PEM private key): what c2pa-rs accepts for ES256 signing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ee_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "codescan tests")])

    def usage(sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=not sign, crl_sign=not sign, encipher_only=False, decipher_only=False,
        )

    def builder(subject: str, key, days: int) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("codescan test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )

    ca = (
        builder("codescan test CA", ca_key, 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(sign=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ee = (
        builder("codescan test signer", ee_key, 365)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = ee.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key = ee_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, key


def c2pa_sign(data: bytes, mime: str, generator: str, source_type: str = TRAINED) -> bytes:
    import c2pa

    certs, key = _chain()
    name, _, version = generator.partition("/")
    manifest = {
        "claim_generator_info": [{"name": name, "version": version or "1.0"}],
        "title": "test",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": source_type}]}}
        ],
    }
    context = c2pa.Context.from_dict(
        {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    )
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, certs, key, None))
    out = io.BytesIO()
    try:
        with c2pa.Builder(manifest, context=context) as b:
            b.sign(signer, mime, io.BytesIO(data), out)
    finally:
        signer.close()
        context.close()
    return out.getvalue()
