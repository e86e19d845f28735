//! A blocking client of the local API, for the CLI and scripts in Rust.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use crate::{Answer, ApiError, Request, ServiceView, Status, encode_line};

/// Asks an agent on its socket, one connection per question.
pub struct Client {
    socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach skiff-agent at {socket} (is it running? are you root?): {source}")]
    Connect { socket: PathBuf, source: std::io::Error },
    #[error("talking to skiff-agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("skiff-agent closed the connection without answering")]
    Closed,
    #[error("skiff-agent's answer is not one this client reads (another version?): {0}")]
    Decode(#[from] serde_json::Error),
    #[error("skiff-agent answered something else than was asked")]
    Unexpected,
    /// The agent answered with an error.
    #[error("skiff-agent: {0}")]
    Agent(#[from] ApiError),
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client { socket: socket.as_ref().to_owned() }
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        match self.ask(&Request::Status)? {
            Answer::Status(status) => Ok(*status),
            other => Err(unexpected(other)),
        }
    }

    pub fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        match self.ask(&Request::ServiceList)? {
            Answer::ServiceList(services) => Ok(services),
            other => Err(unexpected(other)),
        }
    }

    /// Sends one request and reads its answer.
    pub fn ask(&self, request: &Request) -> Result<Answer, ClientError> {
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|source| ClientError::Connect { socket: self.socket.clone(), source })?;
        stream.write_all(encode_line(request).as_bytes())?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        if line.is_empty() {
            return Err(ClientError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }
}

fn unexpected(answer: Answer) -> ClientError {
    match answer {
        Answer::Error(e) => ClientError::Agent(e),
        _ => ClientError::Unexpected,
    }
}
