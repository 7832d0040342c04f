//! `custody cold export|import`: the online side of air-gapped signing. Files go to the
//! offline signers (`custody signer offline`) and back by whatever means the operators
//! trust (removable media, QR codes); every file is signed by its writer.

use std::path::PathBuf;

use custody_protocol::proto::{ColdExportRequest, ColdImportRequest};

use super::client::{status, Conn};
use super::Error;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Write the request files of the next trip of an approved cold request: commit
    /// requests first, then (once every commitment is imported) sign requests.
    Export {
        #[command(flatten)]
        conn: Conn,
        /// The request id.
        request_id: String,
        /// Directory to write the files to.
        #[arg(long)]
        out: PathBuf,
        /// The offline signers to use (exactly t; default the key's first t).
        #[arg(long, value_delimiter = ',')]
        signers: Vec<String>,
    },
    /// Read offline signers' response files; the last share makes the signature.
    Import {
        #[command(flatten)]
        conn: Conn,
        /// Response files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: Cmd) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(async move {
        match c {
            Cmd::Export {
                conn,
                request_id,
                out,
                signers,
            } => {
                let mut c = conn.connect().await?;
                let r = c
                    .cold_export(ColdExportRequest {
                        request_id,
                        signers,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                std::fs::create_dir_all(&out)
                    .map_err(|e| format!("--out {}: {e}", out.display()))?;
                if r.files.is_empty() {
                    return Err("nothing to export: every signer of this trip has answered".into());
                }
                for f in r.files {
                    if f.name.contains('/') || f.name.starts_with('.') {
                        return Err(
                            format!("the coordinator sent a bad file name {:?}", f.name).into()
                        );
                    }
                    let path = out.join(&f.name);
                    std::fs::write(&path, &f.content)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    println!("{}", path.display());
                }
            }
            Cmd::Import { conn, files, json } => {
                let mut c = conn.connect().await?;
                let mut last = None;
                for f in files {
                    let content = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                    let r = c
                        .cold_import(ColdImportRequest { content })
                        .await
                        .map_err(|st| format!("{}: {}", f.display(), status(st)))?
                        .into_inner();
                    last = Some(r);
                }
                if let Some(r) = last {
                    super::request::print(&r, json);
                }
            }
        }
        Ok(())
    })
}
