/*
 * Writes the vDSO image of this process to standard output.
 *
 * The image starts at the address in the auxiliary vector entry
 * AT_SYSINFO_EHDR. Its length is the end of whichever comes last in the
 * file: the ELF and program headers, a PT_LOAD segment, or the section
 * header table. For a vDSO that is the whole shared object as the kernel
 * (or qemu-user) maps it, without the zero padding to the end of the page.
 *
 * Built by ./dump-vdso, natively and for aarch64 (run under qemu-user).
 */
#include <elf.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

int main(void) {
    const unsigned char *base = (const unsigned char *)getauxval(AT_SYSINFO_EHDR);
    if (base == NULL) {
        fprintf(stderr, "dump-vdso: no AT_SYSINFO_EHDR: this process has no vDSO\n");
        return 1;
    }
    Elf64_Ehdr ehdr;
    memcpy(&ehdr, base, sizeof ehdr);
    if (memcmp(ehdr.e_ident, ELFMAG, SELFMAG) != 0 || ehdr.e_ident[EI_CLASS] != ELFCLASS64 ||
        ehdr.e_phentsize != sizeof(Elf64_Phdr)) {
        fprintf(stderr, "dump-vdso: the vDSO is not an ELF64 image\n");
        return 1;
    }

    size_t len = max_size(sizeof ehdr, ehdr.e_phoff + (size_t)ehdr.e_phnum * sizeof(Elf64_Phdr));
    for (size_t i = 0; i < ehdr.e_phnum; i++) {
        Elf64_Phdr phdr;
        memcpy(&phdr, base + ehdr.e_phoff + i * sizeof phdr, sizeof phdr);
        if (phdr.p_type == PT_LOAD) {
            len = max_size(len, phdr.p_offset + phdr.p_filesz);
        }
    }
    if (ehdr.e_shoff != 0) {
        len = max_size(len, ehdr.e_shoff + (size_t)ehdr.e_shnum * ehdr.e_shentsize);
    }

    if (fwrite(base, 1, len, stdout) != len || fflush(stdout) != 0) {
        perror("dump-vdso: write");
        return 1;
    }
    fprintf(stderr, "dump-vdso: %zu bytes\n", len);
    return 0;
}
