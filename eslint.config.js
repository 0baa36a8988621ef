// typescript-eslint's recommended rules, plus the type-aware checks for promises nobody awaits
// (a lost rejection in a daemon is a crash or a silent hang).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'node_modules/',
      'test/oracle/node_modules/',
      'src/proto/',
      'src/kernels/wasm/assembly/',
      'deploy/',
      '.cache/',
      'build/',
      'prebuilds/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // A closure may read a variable assigned once, after it is made.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  { files: ['**/*.mjs', '**/*.js'], languageOptions: { globals: globals.node } },
  { files: ['src/api/dashboard/**/*.js'], languageOptions: { globals: globals.browser } },
);
