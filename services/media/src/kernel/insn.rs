//! A small eBPF assembler: just the instructions the forwarding program uses, with named
//! labels for forward jumps. Encoding follows the kernel's `struct bpf_insn` (8 bytes:
//! opcode, dst/src register nibbles, 16-bit offset, 32-bit immediate, little endian).

use std::collections::HashMap;

/// A register, `R0`..`R10` (`R10` is the read-only frame pointer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reg(u8);

pub(crate) const R0: Reg = Reg(0);
pub(crate) const R1: Reg = Reg(1);
pub(crate) const R2: Reg = Reg(2);
pub(crate) const R3: Reg = Reg(3);
pub(crate) const R4: Reg = Reg(4);
pub(crate) const R5: Reg = Reg(5);
pub(crate) const R6: Reg = Reg(6);
pub(crate) const R7: Reg = Reg(7);
pub(crate) const R8: Reg = Reg(8);
pub(crate) const R9: Reg = Reg(9);
pub(crate) const R10: Reg = Reg(10);

/// Memory access width.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Size {
    B,
    H,
    W,
    DW,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::H => 0x08,
            Size::B => 0x10,
            Size::DW => 0x18,
        }
    }
}

/// Conditional jumps used (64-bit compares).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cond {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cond {
    fn op(self) -> u8 {
        match self {
            Cond::Eq => 0x10,
            Cond::Gt => 0x20,
            Cond::Ge => 0x30,
            Cond::Ne => 0x50,
            Cond::Lt => 0xa0,
            Cond::Le => 0xb0,
        }
    }
}

const CLS_LD: u8 = 0x00;
const CLS_LDX: u8 = 0x01;
const CLS_STX: u8 = 0x03;
const CLS_ALU: u8 = 0x04;
const CLS_JMP: u8 = 0x05;
const CLS_ALU64: u8 = 0x07;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const ALU_ADD: u8 = 0x00;
const ALU_SUB: u8 = 0x10;
const ALU_END: u8 = 0xd0;
/// With `ALU_END`: convert to big endian (a byte swap on the little-endian hosts eBPF
/// runs on here).
const END_TO_BE: u8 = 0x08;
const ALU_AND: u8 = 0x50;
const ALU_MOV: u8 = 0xb0;
const JMP_JA: u8 = 0x00;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;
/// `ld_imm64` source register value meaning "the immediate is a map descriptor".
const PSEUDO_MAP_FD: u8 = 1;

#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

/// A program being written: instructions plus unresolved jumps to labels.
#[derive(Debug, Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    /// (instruction index, label) of jumps waiting for their target.
    fixups: Vec<(usize, &'static str)>,
}

/// A program that cannot be assembled: a jump to a label never placed, or too far.
#[derive(Debug, thiserror::Error)]
#[error("eBPF program: {0}")]
pub(crate) struct AsmError(String);

impl Asm {
    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn {
            code,
            dst: dst.0,
            src: src.0,
            off,
            imm,
        });
        self
    }

    /// `dst = src`.
    pub(crate) fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(CLS_ALU64 | ALU_MOV | SRC_X, dst, src, 0, 0)
    }

    /// `dst = imm` (sign-extended).
    pub(crate) fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | ALU_MOV | SRC_K, dst, R0, 0, imm)
    }

    /// `dst += imm`.
    pub(crate) fn add_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | ALU_ADD | SRC_K, dst, R0, 0, imm)
    }

    /// `dst -= src`.
    pub(crate) fn sub(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(CLS_ALU64 | ALU_SUB | SRC_X, dst, src, 0, 0)
    }

    /// `dst = bswap16(dst)`: a 16-bit network-order field, loaded as is, to its value.
    pub(crate) fn be16(&mut self, dst: Reg) -> &mut Self {
        self.push(CLS_ALU | ALU_END | END_TO_BE, dst, R0, 0, 16)
    }

    /// `dst &= imm`.
    pub(crate) fn and_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(CLS_ALU64 | ALU_AND | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = *(size *)(src + off)`.
    pub(crate) fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(CLS_LDX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub(crate) fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(CLS_STX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `lock *(u64 *)(dst + off) += src`.
    pub(crate) fn atomic_add64(&mut self, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(
            CLS_STX | MODE_ATOMIC | Size::DW.bits(),
            dst,
            src,
            off,
            i32::from(ALU_ADD),
        )
    }

    /// `dst = map` (a map descriptor, resolved by the kernel at load).
    pub(crate) fn load_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        self.insns.push(Insn {
            code: CLS_LD | MODE_IMM | Size::DW.bits(),
            dst: dst.0,
            src: PSEUDO_MAP_FD,
            off: 0,
            imm: fd,
        });
        // ld_imm64 takes two slots; the second holds the upper 32 bits (none here).
        self.push(0, R0, R0, 0, 0)
    }

    /// Calls helper number `helper`; arguments in R1–R5, result in R0, R1–R5 clobbered.
    pub(crate) fn call(&mut self, helper: i32) -> &mut Self {
        self.push(CLS_JMP | JMP_CALL, R0, R0, 0, helper)
    }

    /// Returns R0.
    pub(crate) fn exit(&mut self) -> &mut Self {
        self.push(CLS_JMP | JMP_EXIT, R0, R0, 0, 0)
    }

    /// `if dst <cond> imm goto label`.
    pub(crate) fn jump_imm(
        &mut self,
        cond: Cond,
        dst: Reg,
        imm: i32,
        label: &'static str,
    ) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.push(CLS_JMP | cond.op() | SRC_K, dst, R0, 0, imm)
    }

    /// `if dst <cond> src goto label`.
    pub(crate) fn jump_reg(
        &mut self,
        cond: Cond,
        dst: Reg,
        src: Reg,
        label: &'static str,
    ) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.push(CLS_JMP | cond.op() | SRC_X, dst, src, 0, 0)
    }

    /// `goto label`.
    pub(crate) fn goto(&mut self, label: &'static str) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.push(CLS_JMP | JMP_JA, R0, R0, 0, 0)
    }

    /// Places `label` at the next instruction.
    pub(crate) fn label(&mut self, label: &'static str) -> &mut Self {
        self.labels.insert(label, self.insns.len());
        self
    }

    /// Resolves jumps and encodes the program as the kernel reads it.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, AsmError> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = *self
                .labels
                .get(label)
                .ok_or_else(|| AsmError(format!("jump to unplaced label {label}")))?;
            let rel = i64::try_from(target).unwrap_or(i64::MAX)
                - i64::try_from(at).unwrap_or(i64::MAX)
                - 1;
            let off = i16::try_from(rel)
                .map_err(|_| AsmError(format!("jump to {label} too far ({rel})")))?;
            if let Some(insn) = self.insns.get_mut(at) {
                insn.off = off;
            }
        }
        let mut out = Vec::with_capacity(self.insns.len() * 8);
        for i in &self.insns {
            out.push(i.code);
            out.push((i.src << 4) | (i.dst & 0x0f));
            out.extend_from_slice(&i.off.to_le_bytes());
            out.extend_from_slice(&i.imm.to_le_bytes());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_kernel_reads_it() -> Result<(), AsmError> {
        let mut a = Asm::default();
        a.mov(R6, R1)
            .load(Size::W, R2, R6, 76)
            .jump_imm(Cond::Ne, R2, 0x45, "out")
            .atomic_add64(R7, 24, R1)
            .be16(R3)
            .load_map_fd(R1, 5)
            .label("out")
            .mov_imm(R0, -1)
            .exit();
        let code = a.finish()?;
        let insn = |i: usize| &code[i * 8..i * 8 + 8];
        // mov64 r6, r1: BPF_ALU64|BPF_MOV|BPF_X, dst 6, src 1.
        assert_eq!(insn(0), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        // ldxw r2, [r6+76]
        assert_eq!(insn(1), [0x61, 0x62, 76, 0, 0, 0, 0, 0]);
        // jne r2, 0x45, +4 (over the atomic add, the swap and the two ld_imm64 slots)
        assert_eq!(insn(2), [0x55, 0x02, 4, 0, 0x45, 0, 0, 0]);
        // lock *(u64 *)(r7 + 24) += r1
        assert_eq!(insn(3), [0xdb, 0x17, 24, 0, 0, 0, 0, 0]);
        // r3 = be16 r3
        assert_eq!(insn(4), [0xdc, 0x03, 0, 0, 16, 0, 0, 0]);
        // ld_imm64 r1, map fd 5 (pseudo), and its second half
        assert_eq!(insn(5), [0x18, 0x11, 0, 0, 5, 0, 0, 0]);
        assert_eq!(insn(6), [0; 8]);
        // mov64 r0, -1; exit
        assert_eq!(insn(7), [0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(insn(8), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        Ok(())
    }

    #[test]
    fn refuses_a_jump_to_nowhere() {
        let mut a = Asm::default();
        a.jump_imm(Cond::Eq, R1, 0, "nowhere").exit();
        assert!(a.finish().is_err());
    }
}
