//! A [`Plan`] as the classic-BPF program the kernel's seccomp runs, and installing it.
//!
//! The program reads `struct seccomp_data` (number at 0, architecture at 4, argument `i`
//! at 16 + 8i: low half first on x86_64) and is laid out as
//!
//! ```text
//!   not x86_64 (an i386 int 0x80 call), or an x32 call (bit 30) -> the plan's default
//!   number > enosys_above                                      -> ENOSYS
//!   then one block per run of numbers that share their rules, in ascending order:
//!     number > hi: on to the next block; number < lo: the default
//!     for each rule: its checks (64-bit comparisons, two 32-bit halves), then its verdict
//!     no rule took the call: the default
//!   the default
//! ```
//!
//! Docker's real filter (libseccomp's) also carries the i386 and x32 tables; programs of
//! those ABIs are not what sctrace-confine is for (sctrace refuses to trace them anyway).

use std::io;

use super::profile::{ArgCheck, Op, Plan, Rule, Verdict};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(index: u8) -> u32 {
    16 + 8 * index as u32
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const ALU_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K (0)
const JMP_JGT_K: u16 = 0x05 | 0x20;
const JMP_JGE_K: u16 = 0x05 | 0x30;
const JMP_JSET_K: u16 = 0x05 | 0x40;
const RET_K: u16 = 0x06;

/// The seccomp return value for `verdict`.
fn ret_value(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::Allow => libc::SECCOMP_RET_ALLOW,
        Verdict::Errno(errno) => libc::SECCOMP_RET_ERRNO | (errno & 0xffff),
    }
}

/// Where a conditional jump goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Label(usize),
}

struct Insn {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// A program with symbolic jump targets, resolved by [`Asm::finish`].
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn op(&mut self, code: u16, k: u32) {
        self.insns.push(Insn {
            code,
            k,
            jt: To::Next,
            jf: To::Next,
        });
    }
    fn load(&mut self, offset: u32) {
        self.op(LD_W_ABS, offset);
    }
    fn ret(&mut self, verdict: Verdict) {
        self.op(RET_K, ret_value(verdict));
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.insns.push(Insn { code, k, jt, jf });
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>, String> {
        let resolve = |at: usize, to: To| -> Result<usize, String> {
            let target = match to {
                To::Next => return Ok(0),
                To::Label(l) => self.labels[l].ok_or("a jump to an unbound label")?,
            };
            target
                .checked_sub(at + 1)
                .ok_or_else(|| "a backward jump".to_string())
        };
        let mut out = Vec::with_capacity(self.insns.len());
        for (at, insn) in self.insns.iter().enumerate() {
            let short = |to| -> Result<u8, String> {
                u8::try_from(resolve(at, to)?).map_err(|_| format!("a jump over 255 at {at}"))
            };
            out.push(libc::sock_filter {
                code: insn.code,
                jt: short(insn.jt)?,
                jf: short(insn.jf)?,
                k: insn.k,
            });
        }
        if out.len() > 4096 {
            return Err(format!("{} instructions: seccomp takes 4096", out.len()));
        }
        Ok(out)
    }
}

/// Emits `check`: on to the next instruction when it passes, to `fail` when it does not.
fn emit_check(asm: &mut Asm, check: &ArgCheck, fail: usize) {
    let low = off_arg_low(check.index);
    let high = low + 4;
    let (vh, vl) = ((check.value >> 32) as u32, check.value as u32);
    let pass = asm.label();
    let f = To::Label(fail);
    let p = To::Label(pass);
    match check.op {
        Op::Eq => {
            asm.load(high);
            asm.jump(JMP_JEQ_K, vh, To::Next, f);
            asm.load(low);
            asm.jump(JMP_JEQ_K, vl, p, f);
        }
        Op::Ne => {
            asm.load(high);
            asm.jump(JMP_JEQ_K, vh, To::Next, p);
            asm.load(low);
            asm.jump(JMP_JEQ_K, vl, f, p);
        }
        Op::Masked(mask) => {
            asm.load(high);
            asm.op(ALU_AND_K, (mask >> 32) as u32);
            asm.jump(JMP_JEQ_K, vh, To::Next, f);
            asm.load(low);
            asm.op(ALU_AND_K, mask as u32);
            asm.jump(JMP_JEQ_K, vl, p, f);
        }
        Op::Gt | Op::Ge => {
            // high > vh: passes; high < vh: fails; equal: the low halves decide.
            asm.load(high);
            asm.jump(JMP_JGT_K, vh, p, To::Next);
            asm.jump(JMP_JEQ_K, vh, To::Next, f);
            asm.load(low);
            let code = if check.op == Op::Gt {
                JMP_JGT_K
            } else {
                JMP_JGE_K
            };
            asm.jump(code, vl, p, f);
        }
        Op::Lt | Op::Le => {
            asm.load(high);
            asm.jump(JMP_JGT_K, vh, f, To::Next);
            asm.jump(JMP_JEQ_K, vh, To::Next, p);
            asm.load(low);
            // low < vl is !(low >= vl); low <= vl is !(low > vl).
            let code = if check.op == Op::Lt {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            asm.jump(code, vl, f, p);
        }
    }
    asm.bind(pass);
}

/// Runs of consecutive numbers with the same rules: (lo, hi, rules).
fn blocks(plan: &Plan) -> Vec<(u32, u32, &[Rule])> {
    let mut out: Vec<(u32, u32, &[Rule])> = Vec::new();
    for (nr, rules) in &plan.rules {
        match out.last_mut() {
            Some((_, hi, last)) if *hi + 1 == *nr && *last == rules.as_slice() => *hi = *nr,
            _ => out.push((*nr, *nr, rules)),
        }
    }
    out
}

/// The filter for `plan`.
pub fn compile(plan: &Plan) -> Result<Vec<libc::sock_filter>, String> {
    let mut asm = Asm::default();
    let default = asm.label();
    asm.load(OFF_ARCH);
    asm.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, To::Next, To::Label(default));
    asm.load(OFF_NR);
    asm.jump(JMP_JSET_K, X32_SYSCALL_BIT, To::Label(default), To::Next);
    if let Some(above) = plan.enosys_above {
        let enosys = asm.label();
        let rest = asm.label();
        asm.jump(JMP_JGT_K, above, To::Label(enosys), To::Label(rest));
        asm.bind(enosys);
        asm.ret(Verdict::Errno(super::profile::ENOSYS));
        asm.bind(rest);
    }
    for (lo, hi, rules) in blocks(plan) {
        let next_block = asm.label();
        let nothing = asm.label();
        asm.jump(JMP_JGT_K, hi, To::Label(next_block), To::Next);
        // Blocks ascend: a number below this one's is in no later block either.
        asm.jump(JMP_JGE_K, lo, To::Next, To::Label(nothing));
        for rule in rules {
            let next_rule = asm.label();
            for check in &rule.checks {
                emit_check(&mut asm, check, next_rule);
            }
            asm.ret(rule.verdict);
            asm.bind(next_rule);
        }
        asm.bind(nothing);
        asm.ret(plan.default);
        asm.bind(next_block);
        // The checks above load arguments, but every path through them returns: here the
        // accumulator still holds the number.
    }
    asm.bind(default);
    asm.ret(plan.default);
    asm.finish()
}

/// Sets no_new_privs and installs `program` on the calling thread (the process must have
/// one thread: the filter is not synchronised to others). Every program this process execs
/// afterwards runs under it, and so do their children.
pub fn install(program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: prctl with integer arguments touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, `len` instructions long, both alive for the whole
    // call; the kernel copies the program and keeps no pointer to it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{self, CapSet};
    use crate::profile::{syscall_number, ProfileName, ENOSYS};

    const JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA: never emitted, but the interpreter knows it

    /// Runs `program` as the kernel would on one system call.
    fn run(program: &[libc::sock_filter], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                16..=63 => {
                    let i = ((off - 16) / 8) as usize;
                    if off & 7 == 0 {
                        args[i] as u32
                    } else {
                        (args[i] >> 32) as u32
                    }
                }
                _ => panic!("load from {off}"),
            }
        };
        let mut a = 0u32;
        let mut pc = 0usize;
        loop {
            let insn = program[pc];
            pc += 1;
            let cond = |taken: bool| if taken { insn.jt } else { insn.jf } as usize;
            match insn.code {
                LD_W_ABS => a = word(insn.k),
                ALU_AND_K => a &= insn.k,
                JMP_JA => pc += insn.k as usize,
                JMP_JEQ_K => pc += cond(a == insn.k),
                JMP_JGT_K => pc += cond(a > insn.k),
                JMP_JGE_K => pc += cond(a >= insn.k),
                JMP_JSET_K => pc += cond(a & insn.k != 0),
                RET_K => return insn.k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    /// A few thousand argument values around every boundary the profile has, and some noise.
    fn interesting_args() -> Vec<u64> {
        let mut values = vec![
            0, 1, 7, 8, 37, 38, 39, 40, 41, 44, 0x20000, 0x20008, 0x40000,
        ];
        values.extend([
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0026,
            u64::MAX,
            u64::MAX - 1,
        ]);
        values.extend([0x7e02_0000, 0x11, 0x3d0f00, 0x3d0f00 | 0x1000_0000]);
        for flag in 0..64 {
            values.push(1 << flag);
            values.push((1 << flag) | 0x11);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x);
            values.push(x & 0xffff_ffff);
            values.push(x & 0xff);
        }
        values
    }

    fn plans() -> Vec<Plan> {
        let mut out = Vec::new();
        for with in [
            &[][..],
            &["SYS_PTRACE"],
            &["SYS_ADMIN"],
            &["SYS_ADMIN", "BPF"],
        ] {
            let mut set = CapSet::docker_default();
            for name in with {
                set.add(caps::parse(name).unwrap());
            }
            for kernel in [(4, 4), (6, 1)] {
                out.push(Plan::new(ProfileName::DockerDefault, set, kernel, &[]));
            }
        }
        let deny = ["seccomp", "pidfd_open", "ioctl", "socket"].map(|n| syscall_number(n).unwrap());
        let caps = CapSet::docker_default();
        out.push(Plan::new(ProfileName::DockerDefault, caps, (6, 1), &deny));
        out.push(Plan::new(ProfileName::DockerDefault, caps, (6, 1), &[2000]));
        out.push(Plan::new(ProfileName::Unconfined, caps, (6, 1), &deny));
        out.push(Plan::new(ProfileName::Unconfined, caps, (6, 1), &[]));
        out
    }

    #[test]
    fn the_filter_decides_every_call_as_the_plan_does() {
        let values = interesting_args();
        for plan in plans() {
            let program = compile(&plan).unwrap();
            for nr in 0..1100 {
                let with_args = plan
                    .rules
                    .iter()
                    .find(|(n, _)| *n == nr)
                    .is_some_and(|(_, rules)| rules.iter().any(|r| !r.checks.is_empty()));
                let samples: &[u64] = if with_args { &values } else { &[0, u64::MAX] };
                for &v in samples {
                    for args in [[v, 0, 0, 0, 0, 0], [0, v, 0, 0, 0, 0], [v; 6]] {
                        let want = ret_value(plan.decide(nr, &args));
                        let got = run(&program, AUDIT_ARCH_X86_64, nr, &args);
                        assert_eq!(got, want, "nr {nr} args {args:x?} plan {plan:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_comparison_compiles_to_its_meaning() {
        let values = [
            0,
            1,
            5,
            6,
            7,
            0xffff_ffff,
            1 << 32,
            (1 << 32) | 6,
            (6 << 32) | 6,
        ];
        for op in [
            Op::Eq,
            Op::Ne,
            Op::Lt,
            Op::Le,
            Op::Gt,
            Op::Ge,
            Op::Masked(0xff),
            Op::Masked(0x1_0000_0006),
        ] {
            for &value in &values {
                let check = ArgCheck {
                    index: 2,
                    op,
                    value,
                };
                let plan = Plan {
                    rules: vec![(
                        7,
                        vec![Rule {
                            checks: vec![check],
                            verdict: Verdict::Allow,
                        }],
                    )],
                    enosys_above: None,
                    default: Verdict::Errno(1),
                };
                let program = compile(&plan).unwrap();
                for &arg in &values {
                    let args = [0, 0, arg, 0, 0, 0];
                    let got = run(&program, AUDIT_ARCH_X86_64, 7, &args);
                    let want = ret_value(plan.decide(7, &args));
                    assert_eq!(got, want, "{op:?} {value:#x} with {arg:#x}");
                }
            }
        }
    }

    #[test]
    fn other_abis_get_the_default_and_new_calls_enosys() {
        let caps = CapSet::docker_default();
        let plan = Plan::new(ProfileName::DockerDefault, caps, (6, 1), &[]);
        let program = compile(&plan).unwrap();
        let eperm = ret_value(Verdict::Errno(1));
        let read = [0; 6];
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, 0, &read),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(run(&program, 0x4000_0003, 0, &read), eperm); // i386
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT, &read),
            eperm
        );
        let enosys = ret_value(Verdict::Errno(ENOSYS));
        assert_eq!(run(&program, AUDIT_ARCH_X86_64, 1000, &read), enosys);
        assert!(program.len() < 1000, "{} instructions", program.len());
    }
}
