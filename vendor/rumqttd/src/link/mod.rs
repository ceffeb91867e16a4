pub mod alerts;
pub mod local;
pub mod meters;
