//! The protobuf codec of `keygate.v1`: prost's, except that a request that does not decode
//! (truncated bytes, a string field that is not UTF-8) is the caller's mistake —
//! INVALID_ARGUMENT — not Keygate failing (prost's codec answers INTERNAL). The generated
//! services use it through `codec_path` in `build.rs`.
use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec as TonicCodec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode failures mapped to INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decode<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decode(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder, reporting what it cannot decode as the request's fault.
#[derive(Debug, Clone)]
pub struct Decode<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for Decode<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's message names the field and the problem, never the bytes.
        self.0.decode(buf).map_err(|s| {
            let mut why = s.message().to_owned();
            why.truncate(200);
            Status::invalid_argument(format!("request: not a valid protobuf message ({why})"))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
