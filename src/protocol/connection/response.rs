//! Reading a response made of several parts, as `BASE_BACKUP` sends it: ordinary result sets,
//! then one or more CopyOut streams, then more result sets, then ReadyForQuery.

use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{Connection, Error, Frame, Result, Row, ServerError, raw_row, text_row};

/// One part of a multi-part response.
#[derive(Debug)]
pub enum Response {
    /// A result set begins (RowDescription).
    Columns,
    /// A row of the current result set, as text.
    Row(Row),
    /// A result set or command ended (CommandComplete), with its tag.
    Complete(String),
    /// A CopyOut stream begins.
    CopyOut,
    /// A CopyData payload of the current CopyOut stream.
    CopyData(Bytes),
    /// The current CopyOut stream ended.
    CopyDone,
    /// The server is ready for the next query: the response is over.
    Ready,
}

impl Connection {
    /// Sends `sql` with the simple query protocol; [`Connection::next_response`] reads what
    /// comes back.
    pub async fn send_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await
    }

    /// The next part of the response to [`Connection::send_query`]. A server error is
    /// returned once the server is ready again (anything it sent in between is dropped), so
    /// the connection stays usable.
    pub async fn next_response(&mut self) -> Result<Response> {
        let message = match self.read_frame().await? {
            Frame::CopyData(data) => return Ok(Response::CopyData(data)),
            Frame::CopyBothResponse => {
                return Err(Error::Protocol("unexpected CopyBothResponse".into()));
            }
            Frame::Other(message) => message,
        };
        match message {
            Message::RowDescription(_) => Ok(Response::Columns),
            Message::DataRow(body) => Ok(Response::Row(text_row(raw_row(&body)?))),
            Message::CommandComplete(body) => Ok(Response::Complete(body.tag()?.to_string())),
            Message::EmptyQueryResponse => Ok(Response::Complete(String::new())),
            Message::CopyOutResponse(_) => Ok(Response::CopyOut),
            Message::CopyDone => Ok(Response::CopyDone),
            Message::ReadyForQuery(_) => Ok(Response::Ready),
            Message::ErrorResponse(body) => {
                let error = ServerError::from_fields(body.fields())?;
                self.skip_to_ready().await?;
                Err(Error::Server(error))
            }
            _ => Err(Error::Protocol("unexpected message in a response".into())),
        }
    }

    /// Reads and drops everything up to ReadyForQuery.
    async fn skip_to_ready(&mut self) -> Result<()> {
        loop {
            if let Frame::Other(Message::ReadyForQuery(_)) = self.read_frame().await? {
                return Ok(());
            }
        }
    }
}
